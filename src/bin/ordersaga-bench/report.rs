//! The bench's report: ordersaga's figures beside their floors, as ratios.

use super::cpu;
use super::floors::InsertFloor;
use super::load::LoadResult;
use super::{BenchArgs, Summary};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Floors {
    /// (a) an order and its outbox row in one transaction, from `--floor-connections`.
    pub insert: InsertFloor,
    /// (b) one produce → consume round trip (not measured for the API alone).
    pub rtt: Option<Summary>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub concurrency: u32,
    /// The API alone: nothing settles, so no settle figures.
    pub api_only: bool,
    pub floors: Option<Floors>,
    pub load: LoadResult,
}

fn ms(s: &Summary) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1}",
        s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

/// What each program's CPU came to per order accepted during the load. Near
/// saturation, the machine's cores ÷ the total is about the most orders per
/// second it can take; below it idle polling inflates the figure, and past it
/// the saga's work on accepted orders goes on after the load (docs/performance.md).
fn cpu_per_order_row(cpu: &[cpu::Share], orders: u64) -> String {
    if orders == 0 {
        return String::new();
    }
    let per_order = |secs: f64| secs * 1000.0 / orders as f64;
    format!(
        "| CPU per order accepted during the load, ms (all programs: {:.2}) | {} | | |\n",
        per_order(cpu.iter().map(|s| s.cpu_secs).sum()),
        cpu.iter()
            .map(|s| format!("{} {:.2}", s.program, per_order(s.cpu_secs)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl Report {
    pub fn new(args: &BenchArgs, floors: Option<Floors>, load: LoadResult) -> Self {
        Self {
            concurrency: args.concurrency,
            api_only: args.api_only,
            floors,
            load,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the report serializes")
    }

    pub fn markdown(&self) -> String {
        let l = &self.load;
        let f = self.floors.as_ref();
        let mut out = format!(
            "ordersaga bench: {}, {:.0} s; {} sent, {} accepted, {} refused (503 overloaded), {} errors; ",
            l.mode, l.load_secs, l.sent, l.accepted, l.refused, l.errors,
        );
        out += &if self.api_only {
            "the API alone (its saga not running, so nothing settles)\n\n".to_owned()
        } else {
            format!(
                "{} settled ({} approved, {} canceled), {} not settled\n\n",
                l.settled, l.approved, l.canceled, l.unsettled
            )
        };
        out += "| figure | ordersaga | floor | ratio |\n|---|---|---|---|\n";
        let insert = f.map(|f| &f.insert);
        out += &format!(
            "| POST /api/orders, accepted/s | {:.0} | {} | {} |\n",
            l.post_per_sec,
            insert
                .map(|i| format!(
                    "(a) order+outbox INSERT, COMMIT ×{}: {:.0}/s",
                    i.connections, i.per_sec
                ))
                .unwrap_or("–".into()),
            insert
                .map(|i| ratio(l.post_per_sec, i.per_sec))
                .unwrap_or("–".into()),
        );
        out += &format!(
            "| POST latency p50 / p90 / p99 / max, ms | {} | {} | {} |\n",
            ms(&l.post_latency),
            insert.map(|i| ms(&i.latency)).unwrap_or("–".into()),
            insert
                .map(|i| ratio(l.post_latency.p50_ms, i.latency.p50_ms) + " (p50)")
                .unwrap_or("–".into()),
        );
        if !self.api_only {
            out += &self.settle_rows();
        }
        out += &format!(
            "| service RSS, MiB (max; at the end) | {}; {} | | |\n",
            l.rss_max_mib
                .map(|m| format!("{m:.1}"))
                .unwrap_or("–".into()),
            l.rss_end_mib
                .map(|m| format!("{m:.1}"))
                .unwrap_or("–".into())
        );
        if !l.cpu.is_empty() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            out += &format!(
                "| CPU while the load ran, % of one core (of {}) | {} | | |\n",
                cores * 100,
                l.cpu
                    .iter()
                    .map(|s| format!("{} {:.0}", s.program, s.percent_of_core))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            out += &cpu_per_order_row(&l.cpu, l.accepted);
        }
        out += &super::rows::row(&l.rows_per_order);
        if !l.error_samples.is_empty() {
            out += "\nerrors seen:\n";
            for e in &l.error_samples {
                out += &format!("- {e}\n");
            }
        }
        out
    }

    /// The settle time beside floor (b), its stages and the settled rate.
    fn settle_rows(&self) -> String {
        let l = &self.load;
        let rtt = self.floors.as_ref().and_then(|f| f.rtt.as_ref());
        let mut out = String::new();
        out += &format!(
            "| settle p50 / p90 / p99 / max, ms | {} | {} | {} |\n",
            ms(&l.settle_latency),
            rtt.map(|r| format!("(b) round trip: {}", ms(r)))
                .unwrap_or("–".into()),
            rtt.map(|r| format!(
                "{} (p50), {} (p99)",
                ratio(l.settle_latency.p50_ms, r.p50_ms),
                ratio(l.settle_latency.p99_ms, r.p99_ms)
            ))
            .unwrap_or("–".into()),
        );
        if let Some(r) = rtt {
            out += &format!(
                "| settle target: p50 ≤ 3×(b)+5, p99 ≤ 3×(b)+20, ms | {:.1}, {:.1} | {:.1}, {:.1} | {} |\n",
                l.settle_latency.p50_ms,
                l.settle_latency.p99_ms,
                3.0 * r.p50_ms + 5.0,
                3.0 * r.p99_ms + 20.0,
                if l.settle_latency.p50_ms <= 3.0 * r.p50_ms + 5.0
                    && l.settle_latency.p99_ms <= 3.0 * r.p99_ms + 20.0
                {
                    "met"
                } else {
                    "not met"
                }
            );
        }
        for s in &l.stages {
            out += &format!(
                "| stage: {}, p50 / p90 / p99 / max, ms | {} | | |\n",
                s.name,
                ms(&s.latency)
            );
        }
        out += &format!(
            "| settled orders/s (whole run; slowest second) | {:.0}; {} | | |\n",
            l.settled_per_sec,
            l.settled_per_sec_worst_second
                .map(|w| w.to_string())
                .unwrap_or("–".into())
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(program: &str, cpu_secs: f64) -> cpu::Share {
        cpu::Share {
            program: program.into(),
            percent_of_core: cpu_secs * 10.0, // over 10 s
            cpu_secs,
        }
    }

    #[test]
    fn cpu_per_order_is_each_programs_cpu_over_the_orders() {
        let cpu = [
            share("kafka", 3.0),
            share("postgres", 2.0),
            share("ordersaga (service)", 1.0),
        ];
        // 6 s of CPU for 2,000 orders: 3 ms each.
        let row = cpu_per_order_row(&cpu, 2000);
        assert!(row.contains("ms (all programs: 3.00) |"), "{row}");
        assert!(
            row.contains("| kafka 1.50, postgres 1.00, ordersaga (service) 0.50 |"),
            "{row}"
        );
        assert_eq!(cpu_per_order_row(&cpu, 0), "");
    }
}
