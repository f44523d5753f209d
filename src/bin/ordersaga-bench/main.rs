//! `ordersaga-bench`: drives a running ordersaga over HTTP and reports its
//! throughput, latency, settle time, memory and where the machine's CPU went,
//! next to the floors its dependencies set, measured in the same run on the
//! same servers:
//!
//! - (a) an order row and its outbox row inserted in one transaction into
//!   scratch PostgreSQL tables shaped like `orders` and the saga log, at the
//!   same concurrency (the least work an accepted order can cost);
//! - (b) a bare produce → consume round trip on the same broker, with the same
//!   client code and settings the saga uses (the cost of one saga hop).
//!
//! It is a measuring tool, not part of the service: a binary of its own that
//! uses the library's public items (its settings, its Kafka adapter), which
//! knows nothing of it. An A/B measures two builds of the service with one
//! build of this tool (`BENCH_TOOL` in scripts/bench.sh). See
//! docs/performance.md for how the figures are read.

mod cpu;
mod floors;
mod load;
mod report;
mod rows;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use ordersaga::config::{DbArgs, KafkaArgs, LogArgs};

#[derive(Debug, Parser)]
#[command(
    name = "ordersaga-bench",
    version,
    about = "Measures a running ordersaga over HTTP against PostgreSQL and Kafka floors (docs/performance.md)",
    after_help = "Logging: RUST_LOG sets the log filter (default: info); LOG_FORMAT=json for JSON lines."
)]
pub struct BenchArgs {
    /// Base URL of the running API.
    #[arg(long, env = "BENCH_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Closed loop: requests kept in flight. Also the connection count of the PostgreSQL floor
    /// unless --floor-connections says otherwise.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Connections of the PostgreSQL floor (default: --concurrency). To compare the API at
    /// many requests in flight with the floor where it does best (docs/performance.md).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub floor_connections: Option<u32>,
    /// Open loop: offered orders per second, sent on schedule whatever the answers
    /// (latency counts from the scheduled time). Without it the load is closed-loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// Longest wait, after the load, for the sent orders to settle (seconds).
    #[arg(long, default_value_t = 60)]
    pub settle_timeout_secs: u64,
    /// Pid of the service (`ordersaga all`), to sample its memory (RSS) while it runs
    /// and name it apart in the CPU breakdown.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Skip the floors (only drive the service).
    #[arg(long)]
    pub no_floors: bool,
    /// Measure the API alone: no Kafka floor, no wait for orders to settle, no
    /// settle figures. For an API whose saga is not running (`ordersaga api`
    /// with RELAY_EMBEDDED=false and API_MAX_PROCESSING=0, as the `api`
    /// scenario of `make bench` starts it).
    #[arg(long)]
    pub api_only: bool,
    /// Seconds of the PostgreSQL floor.
    #[arg(long, default_value_t = 10)]
    pub floor_secs: u64,
    /// Round trips measured for the Kafka floor.
    #[arg(long, default_value_t = 300)]
    pub kafka_round_trips: usize,
    /// Also write the figures as one JSON object to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Measure nothing: delete the service's topics (those under
    /// KAFKA_TOPIC_PREFIX) and exit. `make bench` cleans up after a run with
    /// it, so the runs after it do not meet a broker with more partitions.
    #[arg(long)]
    pub delete_topics: bool,
    #[command(flatten)]
    pub log: LogArgs,
    /// The service's database: settle times are read from its orders.
    #[command(flatten)]
    pub db: DbArgs,
    /// The service's Kafka settings: the round-trip floor uses the same ones.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl BenchArgs {
    /// The PostgreSQL floor's connections.
    pub fn floor_connections(&self) -> u32 {
        self.floor_connections.unwrap_or(self.concurrency)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    ordersaga::telemetry::init(args.log.log_format);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ordersaga-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the floors, then the load, then prints the report.
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // reqwest is built without a default TLS crypto provider (see the user API client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.delete_topics {
        let kafka = args.kafka.settings().map_err(anyhow::Error::msg)?;
        return ordersaga::adapters::kafka::delete_topics(&kafka).await;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let pool = ordersaga::adapters::postgres::pool_options()
        .max_connections(args.concurrency.max(args.floor_connections()) + 2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.db.url().map_err(anyhow::Error::msg)?)
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}",
                ordersaga::adapters::postgres::display_url(&args.db.database_url)
            )
        })?;

    let floors = if args.no_floors {
        None
    } else {
        let rtt = if args.api_only {
            None
        } else {
            let kafka = args.kafka.settings().map_err(anyhow::Error::msg)?;
            eprintln!("bench: floor (b): Kafka produce → consume round trips");
            Some(floors::kafka_round_trip(kafka, &run_id, args.kafka_round_trips).await?)
        };
        eprintln!(
            "bench: floor (a): order INSERT + outbox INSERT + COMMIT, {} connections, {} s",
            args.floor_connections(),
            args.floor_secs
        );
        let insert = floors::postgres_insert(
            &pool,
            &run_id,
            args.floor_connections(),
            Duration::from_secs(args.floor_secs),
        )
        .await?;
        Some(report::Floors { insert, rtt })
    };

    let load = load::drive(&args, &pool, &run_id).await?;
    let report = report::Report::new(&args, floors, load);
    println!("{}", report.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Latencies in microseconds, recorded as they come: an HdrHistogram of 3
/// significant figures (exact to 2,048 µs, within 0.1 % above; longer than an
/// hour counts as an hour), whose size does not grow with the samples.
pub type Latencies = hdrhistogram::Histogram<u64>;

/// An empty [`Latencies`].
pub fn latencies() -> Latencies {
    Latencies::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// [`Latencies`] holding `micros`.
pub fn latencies_of(micros: impl IntoIterator<Item = u64>) -> Latencies {
    let mut h = latencies();
    for us in micros {
        h.saturating_record(us);
    }
    h
}

/// Latencies summarised, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles: the smallest recorded value that at least
    /// that share of the samples do not exceed (as the highest value
    /// equivalent to it at the histogram's precision).
    pub fn of(h: &Latencies) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len() as usize,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// The resident set size of a process (VmRSS), in MiB, from /proc (Linux).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let kib = process.status().ok()?.vmrss?;
    Some(kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        BenchArgs::command().debug_assert();
    }

    /// Like the service's own check (config.rs): the README's configuration
    /// table lists every variable this tool reads, with its default.
    #[test]
    fn the_readme_documents_every_environment_variable() {
        use clap::CommandFactory;
        let readme = include_str!("../../../README.md");
        let cmd = BenchArgs::command();
        let wrong: Vec<_> = cmd
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_string_lossy().into_owned();
                let shown = match arg.get_default_values().first() {
                    None => "(empty)".to_string(),
                    Some(d) if d.is_empty() => "(empty)".to_string(),
                    Some(d) => format!("`{}`", d.to_string_lossy()),
                };
                (!readme.contains(&format!("| `{env}` | {shown} |"))).then_some((env, shown))
            })
            .collect();
        assert!(
            cmd.get_arguments()
                .any(|a| a.get_env().is_some_and(|e| e == "BENCH_URL")),
            "BENCH_URL is gone"
        );
        assert!(
            wrong.is_empty(),
            "README's configuration table lacks or misstates {wrong:?}"
        );
    }

    #[test]
    fn the_floor_takes_the_loads_connections_unless_told_otherwise() {
        let parse = |extra: &[&str]| {
            BenchArgs::try_parse_from(
                ["ordersaga-bench", "--concurrency", "32"]
                    .iter()
                    .chain(extra),
            )
            .unwrap()
            .floor_connections()
        };
        assert_eq!(parse(&[]), 32);
        assert_eq!(parse(&["--floor-connections", "8"]), 8);
        assert!(
            BenchArgs::try_parse_from(["ordersaga-bench", "--floor-connections", "0"]).is_err()
        );
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        // Exact below 2,048 µs: 20 µs … 2 ms.
        let s = Summary::of(&latencies_of((1..=100).map(|i| i * 20)));
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 1.0);
        assert_eq!(s.p90_ms, 1.8);
        assert_eq!(s.p99_ms, 1.98);
        assert_eq!(s.max_ms, 2.0);
        let one = Summary::of(&latencies_of([1500]));
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (1.5, 1.5, 1.5));
        assert_eq!(Summary::of(&latencies()).count, 0);
    }

    #[test]
    fn percentiles_are_within_a_thousandth_above_two_milliseconds() {
        let s = Summary::of(&latencies_of((1..=100).map(|ms| ms * 1000)));
        let near = |got: f64, want: f64| (want..=want * 1.001).contains(&got);
        assert!(near(s.p50_ms, 50.0), "{s:?}");
        assert!(near(s.p90_ms, 90.0), "{s:?}");
        assert!(near(s.p99_ms, 99.0), "{s:?}");
        assert!(near(s.max_ms, 100.0), "{s:?}");
        // Longer than the histogram's hour: kept, as an hour.
        let long = Summary::of(&latencies_of([7_200_000_000]));
        assert!(near(long.max_ms, 3_600_000.0), "{long:?}");
    }

    #[test]
    fn reads_this_process_rss() {
        let rss = rss_mib(std::process::id()).expect("Linux /proc");
        assert!(rss > 0.5 && rss < 4096.0, "{rss}");
    }
}
