//! Where the machine's CPU went during the load: every process's CPU time
//! from /proc (Linux), summed by program, so the report shows what the
//! service, the database, the broker and the bench itself each cost.

use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second of /proc's CPU times (`USER_HZ`, fixed at 100 in
/// Linux's user-space ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// Programs that used less than this (% of one core) are left out of the report.
const SHOWN_FROM_PERCENT: f64 = 1.0;

/// CPU time so far of every process: pid → (program, ticks).
pub struct Snapshot {
    at: Instant,
    ticks: HashMap<u32, (String, u64)>,
}

/// One program's share of the CPU during the load.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Share {
    pub program: String,
    /// Percent of one core (a busy 2-core machine totals 200).
    pub percent_of_core: f64,
    /// CPU time used, in seconds.
    pub cpu_secs: f64,
}

impl Snapshot {
    pub fn take() -> Self {
        let ticks = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                let (program, ticks) = parse_stat(&stat)?;
                let program = if program == "java" {
                    let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    java_program(&cmdline)
                } else {
                    program
                };
                Some((pid, (program, ticks)))
            })
            .collect();
        Self {
            at: Instant::now(),
            ticks,
        }
    }

    /// What each program used from `before` to this snapshot, busiest first.
    /// `service` and the bench's own pid are named apart from other programs
    /// of the same name. A process that started meanwhile counts in full; one
    /// that ended meanwhile is missing.
    pub fn since(&self, before: &Snapshot, service: Option<u32>) -> Vec<Share> {
        let secs = self.at.duration_since(before.at).as_secs_f64();
        if secs <= 0.0 {
            return Vec::new();
        }
        let me = std::process::id();
        let mut by_program: HashMap<String, u64> = HashMap::new();
        for (pid, (program, ticks)) in &self.ticks {
            let earlier = match before.ticks.get(pid) {
                Some((p, t)) if p == program => *t,
                _ => 0, // new since `before` (or a reused pid)
            };
            let program = if Some(*pid) == service {
                format!("{program} (service)")
            } else if *pid == me {
                format!("{program} (bench)")
            } else {
                program.clone()
            };
            *by_program.entry(program).or_default() += ticks.saturating_sub(earlier);
        }
        let mut shares: Vec<Share> = by_program
            .into_iter()
            .map(|(program, ticks)| Share {
                program,
                percent_of_core: ticks as f64 / TICKS_PER_SEC / secs * 100.0,
                cpu_secs: ticks as f64 / TICKS_PER_SEC,
            })
            .filter(|s| s.percent_of_core >= SHOWN_FROM_PERCENT)
            .collect();
        shares.sort_by(|a, b| b.percent_of_core.total_cmp(&a.percent_of_core));
        shares
    }
}

/// (program, user + system ticks) from the text of /proc/<pid>/stat. The
/// program name is in parentheses and may itself hold spaces and parentheses;
/// kernel threads (`kworker/1:3-events`) count under their family (`kworker`).
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let program = name.split('/').next().unwrap_or(name).to_owned();
    // After the name: state, ppid, …; utime and stime are the 12th and 13th.
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((program, utime + stime))
}

/// A JVM is named by what it runs: the Kafka broker (main class `kafka.Kafka`)
/// is `kafka`; any other stays `java`. `cmdline` is /proc/<pid>/cmdline.
fn java_program(cmdline: &[u8]) -> String {
    let runs_kafka = cmdline.split(|b| *b == 0).any(|arg| arg == b"kafka.Kafka");
    if runs_kafka { "kafka" } else { "java" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_broker_is_named_by_its_main_class() {
        let broker = b"java\0-Xmx1g\0-cp\0/c/libs/*\0kafka.Kafka\0/s/server.properties\0";
        assert_eq!(java_program(broker), "kafka");
        assert_eq!(java_program(b"java\0-jar\0app.jar\0"), "java");
    }

    #[test]
    fn reads_the_program_and_cpu_ticks_even_with_odd_names() {
        let stat = "4242 (tokio (x) 1) S 1 4242 4242 0 -1 4194560 511 0 0 0 170 30 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat(stat), Some(("tokio (x) 1".into(), 200)));
        let kernel = "77 (kworker/u8:1-ext4-rsv-conversion) I 2 0 0 0 -1 0 0 0 0 0 5 6 0 0";
        assert_eq!(parse_stat(kernel), Some(("kworker".into(), 11)));
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
    }

    fn own_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
        parse_stat(&stat).expect("parses").1
    }

    #[test]
    fn counts_the_cpu_this_process_used_as_the_bench() {
        let before = Snapshot::take();
        // Work until the kernel has charged this process 20 ticks (0.2 s of CPU).
        let start = own_ticks();
        let give_up = Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        while own_ticks() < start + 20 && Instant::now() < give_up {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert!(own_ticks() >= start + 20, "no CPU charged in 30 s");
        let after = Snapshot::take();
        let secs = after.at.duration_since(before.at).as_secs_f64();
        let shares = after.since(&before, None);
        let me = shares
            .iter()
            .find(|s| s.program.ends_with("(bench)"))
            .unwrap_or_else(|| panic!("this process is missing from {shares:?}"));
        let cpu_secs = me.percent_of_core / 100.0 * secs;
        assert!(
            cpu_secs >= 0.2 - 1e-9,
            "counted {cpu_secs} s of the 0.2 s used: {me:?}"
        );
        assert!(
            (me.cpu_secs - cpu_secs).abs() < 1e-6,
            "{me:?} over {secs} s"
        );
    }
}
