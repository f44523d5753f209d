//! Where the machine's CPU went during the load: every process's CPU time
//! from /proc (Linux, read with `procfs`), summed by program, so the report
//! shows what the service, the database, the broker and the bench itself each
//! cost.

use std::collections::HashMap;
use std::time::Instant;

use procfs::process::{Process, Stat, all_processes};

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
        let ticks = all_processes()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|process| {
                let stat = process.stat().ok()?;
                let pid = u32::try_from(stat.pid).ok()?;
                Some((pid, (program(&stat, &process), cpu_ticks(&stat))))
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
        // The unit of /proc's CPU times (USER_HZ, 100 on Linux).
        let ticks_per_sec = procfs::ticks_per_second() as f64;
        let mut shares: Vec<Share> = by_program
            .into_iter()
            .map(|(program, ticks)| Share {
                program,
                percent_of_core: ticks as f64 / ticks_per_sec / secs * 100.0,
                cpu_secs: ticks as f64 / ticks_per_sec,
            })
            .filter(|s| s.percent_of_core >= SHOWN_FROM_PERCENT)
            .collect();
        shares.sort_by(|a, b| b.percent_of_core.total_cmp(&a.percent_of_core));
        shares
    }
}

/// User + system CPU time of a process, in ticks.
fn cpu_ticks(stat: &Stat) -> u64 {
    stat.utime + stat.stime
}

/// The program a process counts under: its name (`comm`), a kernel thread
/// (`kworker/1:3-events`) under its family (`kworker`), and a JVM by what it
/// runs (its command line is read only then).
fn program(stat: &Stat, process: &Process) -> String {
    let name = stat.comm.split('/').next().unwrap_or(&stat.comm);
    if name == "java" {
        java_program(&process.cmdline().unwrap_or_default())
    } else {
        name.to_owned()
    }
}

/// A JVM is named by what it runs: the Kafka broker (main class `kafka.Kafka`)
/// is `kafka`; any other stays `java`. `cmdline` is its arguments.
fn java_program(cmdline: &[String]) -> String {
    let runs_kafka = cmdline.iter().any(|arg| arg == "kafka.Kafka");
    if runs_kafka { "kafka" } else { "java" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_broker_is_named_by_its_main_class() {
        let args = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
        let broker = args("java -Xmx1g -cp /c/libs/* kafka.Kafka /s/server.properties");
        assert_eq!(java_program(&broker), "kafka");
        assert_eq!(java_program(&args("java -jar app.jar")), "java");
    }

    /// A line of /proc/<pid>/stat as the kernel writes it (52 fields).
    fn stat_line(pid: u32, comm: &str, utime: u64, stime: u64) -> String {
        format!(
            "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 511 0 0 0 {utime} {stime} 0 0 20 0 9 0 123 \
             456789 789 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0"
        )
    }

    #[test]
    fn reads_the_program_and_cpu_ticks_even_with_odd_names() {
        use procfs::FromRead;
        let me = Process::myself().expect("Linux /proc");
        let stat = Stat::from_read(stat_line(4242, "tokio (x) 1", 170, 30).as_bytes()).unwrap();
        assert_eq!(
            (program(&stat, &me), cpu_ticks(&stat)),
            ("tokio (x) 1".into(), 200)
        );
        let kernel = stat_line(77, "kworker/u8:1-ext4-rsv-conversion", 5, 6);
        let stat = Stat::from_read(kernel.as_bytes()).unwrap();
        assert_eq!(
            (program(&stat, &me), cpu_ticks(&stat)),
            ("kworker".into(), 11)
        );
        assert!(Stat::from_read("4242 (cut".as_bytes()).is_err());
        assert!(Stat::from_read("4242 (short) S 1 2".as_bytes()).is_err());
    }

    fn own_ticks() -> u64 {
        cpu_ticks(
            &Process::myself()
                .and_then(|p| p.stat())
                .expect("Linux /proc"),
        )
    }

    #[test]
    fn counts_the_cpu_this_process_used_as_the_bench() {
        let before = Snapshot::take();
        // Work until the kernel has charged this process 0.2 s of CPU.
        let fifth = procfs::ticks_per_second() / 5;
        let start = own_ticks();
        let give_up = Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        while own_ticks() < start + fifth && Instant::now() < give_up {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert!(own_ticks() >= start + fifth, "no CPU charged in 30 s");
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
