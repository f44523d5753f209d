//! Reliability drill: runs ordersaga as separate processes on loopback, sends
//! a load of orders, and breaks something in each phase: every component is
//! killed with SIGKILL and restarted in turn, then the Kafka broker is killed
//! (and restarted with its data) and wiped (restarted empty), and MongoDB and
//! the user API are stopped for a while, and a crowd of slow clients and
//! live-page streams besieges the API; last, every component is stopped with
//! SIGTERM in turn, as a deployment does, and must exit 0 within its shutdown
//! timeout before it is started again. After each phase it checks that every
//! accepted order settled exactly once with the right status and that the
//! MongoDB event log agrees with PostgreSQL, and prints a table of figures.
//! Exits non-zero on any loss, duplicate, stuck or wrong order, or a graceful
//! stop that was not.
//!
//!   make drill                                 (5,000 orders, 30 s outages)
//!   make drill DRILL_ARGS="--orders 300 --outage-secs 5"

#[path = "../integration/common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Api, Launcher, PrivateServer, Process, SystemEnv, eventually};
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::doc;
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(about = "Break ordersaga on purpose and count what was lost")]
struct Args {
    /// Orders to send over the whole drill.
    #[arg(long, default_value_t = 5000)]
    orders: usize,
    /// Offered load, orders per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long the broker, MongoDB and the user API stay down.
    #[arg(long, default_value_t = 30)]
    outage_secs: u64,
    /// Longest wait for a phase's orders to settle.
    #[arg(long, default_value_t = 300)]
    settle_secs: u64,
    /// Run only these phases (comma-separated): api, relay, orchestrator, user-validator,
    /// balance-validator, broker-kill, broker-wipe, mongodb, user-api, crowd, and
    /// term-<component> (term-api, term-relay, ..., term-user-api) for the SIGTERM phases.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Arguments cargo's test runner may pass (ignored).
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    _rest: Vec<String>,
}

/// One component: how to start it, and the running process.
struct Component {
    subcommand: &'static str,
    extra: Vec<(&'static str, &'static str)>,
    process: Option<Process>,
}

struct Stack {
    launcher: Launcher,
    kafka: PrivateServer,
    mongo: PrivateServer,
    components: HashMap<&'static str, Component>,
}

impl Stack {
    fn start(&mut self, name: &'static str) {
        let c = self.components.get_mut(name).expect("known component");
        let extra = c.extra.clone();
        c.process = Some(self.launcher.spawn(c.subcommand, &extra));
    }

    fn kill(&mut self, name: &'static str) {
        if let Some(mut p) = self.components.get_mut(name).and_then(|c| c.process.take()) {
            p.kill();
        }
    }

    /// Stops the component with SIGTERM, as a deployment would, and waits (at
    /// most `within`) for it to exit; its exit status, or None if it did not
    /// exit in time (it is killed then).
    async fn terminate(
        &mut self,
        name: &'static str,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut p = self
            .components
            .get_mut(name)
            .and_then(|c| c.process.take())
            .expect("the component runs");
        // Waiting blocks: off the runtime's threads, which carry the load.
        tokio::task::spawn_blocking(move || p.terminate(within))
            .await
            .unwrap()
    }
}

/// The shutdown timeout the drill gives every component (`SHUTDOWN_TIMEOUT_MS`).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the shutdown timeout, for the process to start handling the signal and to end.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(&'static str),
    /// SIGKILL of the broker; it restarts after the outage with its log dir as it was.
    BrokerKill,
    /// The broker stopped and its log dir deleted: it restarts empty, without
    /// topics, messages or committed offsets, as after a lost disk.
    BrokerWipe,
    MongoDb,
    UserApi,
    /// While the orders are sent: `CROWD_STREAMS` live-page streams and
    /// `CROWD_SLOW` clients that never finish their request bodies.
    Crowd,
    /// SIGTERM to a component while orders are in flight: it must exit 0
    /// within its shutdown timeout; then it is started again.
    Term(&'static str),
}

/// Live-page streams the crowd opens (the API serves `UI_STREAM_MAX`, 100).
const CROWD_STREAMS: usize = 500;
/// Clients of the crowd that send their request bodies too slowly.
const CROWD_SLOW: usize = 50;

impl Fault {
    fn label(&self) -> String {
        match self {
            Fault::Kill(c) => format!("kill -9 {c}"),
            Fault::BrokerKill => "kill -9 broker".into(),
            Fault::BrokerWipe => "broker wiped".into(),
            Fault::MongoDb => "MongoDB down".into(),
            Fault::UserApi => "user API down".into(),
            Fault::Crowd => format!("crowd ({CROWD_SLOW} slow, {CROWD_STREAMS} SSE)"),
            Fault::Term(c) => format!("SIGTERM {c}"),
        }
    }

    /// The name `--only` knows it by.
    fn name(&self) -> &'static str {
        match self {
            Fault::Kill(c) => c,
            Fault::BrokerKill => "broker-kill",
            Fault::BrokerWipe => "broker-wipe",
            Fault::MongoDb => "mongodb",
            Fault::UserApi => "user-api",
            Fault::Crowd => "crowd",
            Fault::Term("api") => "term-api",
            Fault::Term("relay") => "term-relay",
            Fault::Term("orchestrator") => "term-orchestrator",
            Fault::Term("user-validator") => "term-user-validator",
            Fault::Term("balance-validator") => "term-balance-validator",
            Fault::Term("user-api") => "term-user-api",
            Fault::Term(other) => unreachable!("no phase stops {other}"),
        }
    }

    fn is_outage(&self) -> bool {
        !matches!(self, Fault::Kill(_) | Fault::Term(_))
    }

    /// Whether POSTs may be refused during this phase: only while the API
    /// process itself restarts (connection refused). In every other phase an
    /// order not accepted is a failure.
    fn may_refuse(&self) -> bool {
        matches!(self, Fault::Kill("api") | Fault::Term("api"))
    }
}

/// What an order should end as, by its number.
fn order_form(n: usize) -> (String, String, &'static str, Option<&'static str>) {
    match n % 10 {
        0 => (
            "10.00".into(),
            format!("drill-{}-invalid", n % 13),
            "CANCELED",
            Some("USER_INVALID"),
        ),
        1 => (
            "10000.01".into(),
            format!("drill-{}", n % 13),
            "CANCELED",
            Some("BALANCE_LIMIT_EXCEEDED"),
        ),
        _ => (
            format!("{}.{:02}", 1 + n % 9000, n % 100),
            format!("drill-{}", n % 13),
            "APPROVED",
            None,
        ),
    }
}

#[derive(Debug, Default, Clone)]
struct Row {
    phase: String,
    sent: usize,
    accepted: usize,
    settled: usize,
    lost: usize,
    duplicated: usize,
    stuck: usize,
    wrong: usize,
    p50_settle_ms: i64,
    max_settle_ms: i64,
    settle_times: Vec<i64>,
    /// For an outage: from the server's return (its port answering again) to
    /// the last settlement of the orders accepted before it, ms.
    recovered_ms: Option<i64>,
    /// "expected → got" for each kind of wrong outcome, with counts.
    wrong_kinds: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct CrowdReport {
    streams_served: usize,
    streams_refused: usize,
    slow_timed_out: usize,
}

/// Besieges the API for `lasting`: `CROWD_STREAMS` clients open the live
/// page's stream and keep reading it, `CROWD_SLOW` clients start orders whose
/// bodies never finish (and start again when answered).
async fn crowd(api: &Api, lasting: Duration) -> CrowdReport {
    let stop = tokio_util::sync::CancellationToken::new();
    let streams: Vec<_> = (0..CROWD_STREAMS)
        .map(|_| {
            let (api, stop) = (api.clone(), stop.clone());
            tokio::spawn(async move {
                let mut r = api.http.get(api.url("/ui/stream")).send().await.ok()?;
                let status = r.status().as_u16();
                if status == 200 {
                    while !stop.is_cancelled() {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            chunk = r.chunk() => if !matches!(chunk, Ok(Some(_))) { break },
                        }
                    }
                }
                Some(status)
            })
        })
        .collect();
    let slow: Vec<_> = (0..CROWD_SLOW)
        .map(|_| {
            let (api, stop) = (api.clone(), stop.clone());
            tokio::spawn(async move {
                let mut timed_out = 0;
                while !stop.is_cancelled() {
                    let body = futures::stream::once(async {
                        Ok::<_, std::io::Error>(b"value=1".to_vec())
                    })
                    .chain(futures::stream::pending());
                    let sent = api
                        .http
                        .post(api.url("/api/orders"))
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .body(reqwest::Body::wrap_stream(body))
                        .send();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = sent => match r {
                            Ok(r) if r.status() == 503 => timed_out += 1,
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        },
                    }
                }
                timed_out
            })
        })
        .collect();
    tokio::time::sleep(lasting).await;
    stop.cancel();
    let mut report = CrowdReport::default();
    for s in streams {
        match s.await.ok().flatten() {
            Some(200) => report.streams_served += 1,
            Some(503) => report.streams_refused += 1,
            _ => {}
        }
    }
    for s in slow {
        report.slow_timed_out += s.await.unwrap_or(0);
    }
    report
}

/// What the load got: how many were sent, the accepted ids by number, and
/// how many of the others got each kind of refusal.
struct Load {
    sent: usize,
    accepted: Vec<(usize, String)>,
    refused: std::collections::BTreeMap<String, usize>,
}

/// Sends orders `range` at `rate`, with at most 32 in flight.
async fn send_load(api: &Api, range: std::ops::Range<usize>, rate: f64) -> Load {
    let permits = Arc::new(Semaphore::new(32));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, n) in range.clone().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let (value, user, _, _) = order_form(n);
            let form = [
                ("value", value.as_str()),
                ("user_id", &user),
                ("installment", "1"),
                ("method", "cash"),
            ];
            let response = api
                .http
                .post(api.url("/api/orders"))
                .form(&form)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match response {
                Ok(r) if r.status().as_u16() == 201 => {
                    let body: serde_json::Value =
                        r.json().await.map_err(|_| "201 without a body")?;
                    let id = body["id"].as_str().ok_or("201 without an id")?;
                    Ok((n, id.to_string()))
                }
                Ok(r) => Err(format!("answered {}", r.status().as_u16())),
                Err(e) if e.is_connect() => Err("connection refused".into()),
                Err(e) if e.is_timeout() => Err("no answer within 10 s".into()),
                Err(_) => Err("connection lost before the answer".into()),
            }
        }));
    }
    let mut load = Load {
        sent: range.len(),
        accepted: Vec::new(),
        refused: Default::default(),
    };
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => load.accepted.push(a),
            Err(kind) => *load.refused.entry(kind).or_default() += 1,
        }
    }
    load
}

async fn check_phase(
    launcher: &Launcher,
    phase: &str,
    sent: usize,
    accepted: &[(usize, String)],
    settle: Duration,
) -> Row {
    let pool = launcher.pool();
    let ids: Vec<String> = accepted.iter().map(|(_, id)| id.clone()).collect();
    // Wait (bounded) for the phase's orders to leave PROCESSING.
    let deadline = Instant::now() + settle;
    loop {
        let processing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND status = 'PROCESSING'",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await
        .unwrap();
        if processing == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rows: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id::text, status, cancel_reason,
                (extract(epoch FROM updated_at - created_at) * 1000)::bigint
           FROM orders WHERE id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .unwrap();
    let by_id: HashMap<&str, (&str, Option<&str>, i64)> = rows
        .iter()
        .map(|(id, s, r, ms)| (id.as_str(), (s.as_str(), r.as_deref(), *ms)))
        .collect();
    let mut row = Row {
        phase: phase.into(),
        sent,
        accepted: accepted.len(),
        ..Row::default()
    };
    let mut settle_times = Vec::new();
    for (n, id) in accepted {
        let (_, _, want_status, want_reason) = order_form(*n);
        match by_id.get(id.as_str()) {
            None => row.lost += 1,
            Some(("PROCESSING", _, _)) => row.stuck += 1,
            Some((status, reason, ms)) => {
                row.settled += 1;
                settle_times.push(*ms);
                if *status != want_status || *reason != want_reason {
                    row.wrong += 1;
                    let kind = format!("{want_status}/{want_reason:?} → {status}/{reason:?}");
                    *row.wrong_kinds.entry(kind).or_default() += 1;
                }
            }
        }
    }
    let duplicated: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT order_id) FROM (
             SELECT order_id FROM order_status_transitions WHERE order_id = ANY($1::uuid[]) AND from_status = 'PROCESSING'
               GROUP BY order_id HAVING count(*) > 1
             UNION ALL
             SELECT order_id FROM saga_log WHERE order_id = ANY($1::uuid[]) AND event_type IN ('command_sent', 'status_changed')
               GROUP BY order_id, event_type, payload->>'step', payload->>'attempt' HAVING count(*) > 1) d",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .unwrap();
    row.duplicated = duplicated as usize;
    row.settle_times = settle_times;
    row.summarize();
    row
}

impl Row {
    fn summarize(&mut self) {
        self.settle_times.sort_unstable();
        self.p50_settle_ms = self
            .settle_times
            .get(self.settle_times.len() / 2)
            .copied()
            .unwrap_or(0);
        self.max_settle_ms = self.settle_times.last().copied().unwrap_or(0);
    }
}

/// How long after `back_at` the last of the orders accepted before it settled
/// (None if none was accepted before it).
async fn recovered_ms(
    launcher: &Launcher,
    accepted: &[(usize, String)],
    back_at: chrono::DateTime<chrono::Utc>,
) -> Option<i64> {
    let ids: Vec<&str> = accepted.iter().map(|(_, id)| id.as_str()).collect();
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM max(updated_at) - $2) * 1000)::bigint
           FROM orders WHERE id = ANY($1::uuid[]) AND created_at < $2 AND status <> 'PROCESSING'",
    )
    .bind(&ids)
    .bind(back_at)
    .fetch_one(launcher.pool())
    .await
    .unwrap()
}

/// MongoDB's event log against PostgreSQL's events: same orders, same event ids, every status change.
async fn check_event_log(launcher: &Launcher, settle: Duration) -> Result<String, String> {
    let pool = launcher.pool();
    eventually("the event log to catch up", settle, || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM saga_log l, relay_feeds f WHERE f.feed = 'events' AND l.event_id IS NOT NULL AND (l.txid, l.seq) > (f.after_txid, f.after_seq)")
                .fetch_one(pool)
                .await
                .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    let pg: Vec<(String, String, String)> =
        sqlx::query_as("SELECT event_id::text, order_id::text, event_type FROM saga_log WHERE event_id IS NOT NULL")
            .fetch_all(pool)
            .await
            .unwrap();
    let coll = launcher.env.mongo.log.collection().clone();
    let docs: Vec<mongodb::bson::Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mongo: HashMap<String, (String, String)> = docs
        .iter()
        .map(|d| {
            (
                d.get_str("_id").unwrap().to_string(),
                (
                    d.get_str("order_id").unwrap().to_string(),
                    d.get_str("type").unwrap().to_string(),
                ),
            )
        })
        .collect();
    let missing = pg
        .iter()
        .filter(|(id, _, _)| !mongo.contains_key(id))
        .count();
    let extra = mongo.len().saturating_sub(pg.len() - missing);
    let settled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PROCESSING'")
            .fetch_one(pool)
            .await
            .unwrap();
    let status_changes = mongo
        .values()
        .filter(|(_, t)| t == "status_changed")
        .count() as i64;
    let orders_pg: std::collections::HashSet<&str> =
        pg.iter().map(|(_, o, _)| o.as_str()).collect();
    let orders_mongo: std::collections::HashSet<&str> =
        mongo.values().map(|(o, _)| o.as_str()).collect();
    let report = format!(
        "event log: {} events in PostgreSQL, {} in MongoDB, {missing} missing, {extra} extra; {} orders in each ({}); \
         {status_changes} status changes logged for {settled} settled orders",
        pg.len(),
        mongo.len(),
        orders_pg.len(),
        if orders_pg == orders_mongo {
            "the same"
        } else {
            "DIFFERENT"
        },
    );
    if missing == 0 && extra == 0 && orders_pg == orders_mongo && status_changes == settled {
        Ok(report)
    } else {
        Err(report)
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| {:<26} | {:>6} | {:>8} | {:>7} | {:>4} | {:>10} | {:>5} | {:>5} | {:>14} | {:>14} | {:>17} |",
        "phase",
        "sent",
        "accepted",
        "settled",
        "lost",
        "duplicated",
        "stuck",
        "wrong",
        "p50 settle ms",
        "max settle ms",
        "recovered in ms"
    );
    println!(
        "|{}|",
        ["-"; 11]
            .iter()
            .zip([28, 8, 10, 9, 6, 12, 7, 7, 16, 16, 19])
            .map(|(d, w)| d.repeat(w))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        println!(
            "| {:<26} | {:>6} | {:>8} | {:>7} | {:>4} | {:>10} | {:>5} | {:>5} | {:>14} | {:>14} | {:>17} |",
            r.phase,
            r.sent,
            r.accepted,
            r.settled,
            r.lost,
            r.duplicated,
            r.stuck,
            r.wrong,
            r.p50_settle_ms,
            r.max_settle_ms,
            match r.recovered_ms {
                Some(ms) if ms > 0 => ms.to_string(),
                Some(_) => "during it".into(),
                None => String::new(),
            }
        );
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let kafka = PrivateServer::kafka();
    let mongo = PrivateServer::mongo();
    let env = SystemEnv::on(Some(&kafka), Some(&mongo)).await;
    let launcher = Launcher::new(env)
        .set("KAFKA_PARTITIONS", 6)
        .set("STEP_TIMEOUT_MS", 3000)
        .set("STEP_MAX_ATTEMPTS", 8)
        .set("SAGA_START_GRACE_MS", 3000)
        .set("USER_API_FAILURE_POLICY", "wait")
        .set("USER_API_WAIT_RETRY_MS", 500)
        .set("SAGA_DEADLINE_MS", 600_000)
        .set("USER_API_TIMEOUT_MS", 500)
        .set("USER_API_RETRIES", 1)
        .set("KAFKA_MESSAGE_TIMEOUT_MS", 5000)
        .set("MONGODB_TIMEOUT_MS", 2000)
        // The crowd's slow clients are answered 503 timeout after this.
        .set("API_REQUEST_TIMEOUT_MS", 3000)
        .set("SHUTDOWN_TIMEOUT_MS", SHUTDOWN_TIMEOUT.as_millis())
        .set(
            "RUST_LOG",
            std::env::var("DRILL_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .set(
            "KAFKA_EXTRA_CONFIG",
            std::env::var("DRILL_KAFKA_EXTRA_CONFIG").unwrap_or_default(),
        );
    let no_relay = vec![("RELAY_EMBEDDED", "false")];
    let mut stack = Stack {
        launcher,
        kafka,
        mongo,
        components: HashMap::new(),
    };
    for (name, extra) in [
        ("user-api", vec![]),
        ("api", no_relay.clone()),
        ("relay", vec![]),
        ("orchestrator", no_relay.clone()),
        ("user-validator", vec![]),
        ("balance-validator", vec![]),
    ] {
        stack.components.insert(
            name,
            Component {
                subcommand: name,
                extra,
                process: None,
            },
        );
        stack.start(name);
    }
    let api = stack.launcher.api();
    api.wait_healthy(Duration::from_secs(120)).await;
    // Warm up: the consumer groups have formed once an order went all the way through.
    let warm = common::place(&api, "1.00", "drill-warm-up", "1", "cash").await;
    api.wait_settled(&warm, Duration::from_secs(120)).await;
    println!(
        "drill: {} orders at {}/s, outages of {} s; processes: api, relay, orchestrator, user-validator, balance-validator, user-api",
        args.orders, args.rate, args.outage_secs
    );

    let faults: Vec<Fault> = [
        Fault::Kill("api"),
        Fault::Kill("relay"),
        Fault::Kill("orchestrator"),
        Fault::Kill("user-validator"),
        Fault::Kill("balance-validator"),
        Fault::BrokerKill,
        Fault::BrokerWipe,
        Fault::MongoDb,
        Fault::UserApi,
        Fault::Crowd,
        // Last, every component stopped gracefully in turn, as a rolling deployment does.
        Fault::Term("api"),
        Fault::Term("relay"),
        Fault::Term("orchestrator"),
        Fault::Term("user-validator"),
        Fault::Term("balance-validator"),
        Fault::Term("user-api"),
    ]
    .into_iter()
    .filter(|f| args.only.is_empty() || args.only.iter().any(|o| *o == f.name()))
    .collect();
    assert!(!faults.is_empty(), "--only named no known phase");
    let per_phase = args.orders / faults.len();
    let outage = Duration::from_secs(args.outage_secs);
    let settle = Duration::from_secs(args.settle_secs);
    let mut rows = Vec::new();
    // Components that exited without being killed, and orders refused where none should be.
    let mut exited: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    // Bounds that did not hold under the crowd.
    let mut bounds: Vec<String> = Vec::new();
    // Components that did not exit 0 within their shutdown timeout on SIGTERM.
    let mut unclean: Vec<String> = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        let range = i * per_phase..if i + 1 == faults.len() {
            args.orders
        } else {
            (i + 1) * per_phase
        };
        // Outages last longer than the phase's load would: spread the load over the outage and more.
        let rate = if fault.is_outage() {
            args.rate
                .min(range.len() as f64 / (outage.as_secs_f64() + 10.0))
                .max(1.0)
        } else {
            args.rate
        };
        let load_time = Duration::from_secs_f64(range.len() as f64 / rate);
        println!(
            "phase {}: {} ({} orders over {:.0} s)",
            i + 1,
            fault.label(),
            range.len(),
            load_time.as_secs_f64()
        );
        let load = {
            let api = api.clone();
            let range = range.clone();
            tokio::spawn(async move { send_load(&api, range, rate).await })
        };
        let fault_at = if fault.is_outage() {
            Duration::from_secs(5).min(load_time / 4)
        } else {
            load_time / 2
        };
        tokio::time::sleep(fault_at).await;
        // When the broken server answers again (outages only).
        let mut back_at = None;
        match fault {
            Fault::Kill(name) => {
                stack.kill(name);
                stack.start(name);
            }
            Fault::BrokerKill => {
                stack.kafka.kill();
                tokio::time::sleep(outage).await;
                stack.kafka.start();
                back_at = Some(chrono::Utc::now());
            }
            Fault::BrokerWipe => {
                stack.kafka.stop();
                stack.kafka.wipe();
                tokio::time::sleep(outage).await;
                stack.kafka.start();
                back_at = Some(chrono::Utc::now());
            }
            Fault::MongoDb => {
                stack.mongo.stop();
                tokio::time::sleep(outage).await;
                stack.mongo.start();
                back_at = Some(chrono::Utc::now());
            }
            Fault::UserApi => {
                stack.kill("user-api");
                tokio::time::sleep(outage).await;
                stack.start("user-api");
                back_at = Some(chrono::Utc::now());
            }
            Fault::Term(name) => {
                let within = SHUTDOWN_TIMEOUT + EXIT_MARGIN;
                let stopping = Instant::now();
                let status = stack.terminate(name, within).await;
                let took = stopping.elapsed();
                match status {
                    Some(status) if status.success() => {
                        println!("  {name} exited 0 {} ms after SIGTERM", took.as_millis())
                    }
                    Some(status) => {
                        println!("  ! {name} exited with {status} on SIGTERM; see its log");
                        unclean.push(format!("{name} exited with {status}"));
                    }
                    None => {
                        println!(
                            "  ! {name} did not exit within {} s of SIGTERM",
                            within.as_secs()
                        );
                        unclean.push(format!(
                            "{name} still running {} s after SIGTERM",
                            within.as_secs()
                        ));
                    }
                }
                stack.start(name);
            }
            Fault::Crowd => {
                let report = crowd(&api, outage).await;
                println!(
                    "  crowd: {} streams served, {} refused (503 overloaded); {} slow requests answered 503 timeout",
                    report.streams_served, report.streams_refused, report.slow_timed_out
                );
                if report.streams_served == 0 || report.streams_refused == 0 {
                    bounds.push(format!(
                        "the stream cap did not hold in phase {}: {} served, {} refused",
                        i + 1,
                        report.streams_served,
                        report.streams_refused
                    ));
                }
            }
        }
        if matches!(fault, Fault::Kill("api") | Fault::Term("api")) {
            api.wait_healthy(Duration::from_secs(120)).await;
        }
        let Load {
            sent,
            accepted,
            refused: refusals,
        } = load.await.unwrap();
        if !refusals.is_empty() {
            let kinds: Vec<String> = refusals.iter().map(|(k, n)| format!("{n} × {k}")).collect();
            println!("  not accepted: {}", kinds.join(", "));
        }
        for (name, c) in stack.components.iter_mut() {
            if let Some(status) = c.process.as_mut().and_then(Process::exit_status) {
                println!("  ! {name} exited by itself ({status}); see its log");
                exited.push(format!("{name} in phase {}", i + 1));
            }
        }
        if accepted.len() < sent && !fault.may_refuse() {
            println!(
                "  ! {} of {sent} orders were not accepted, in a phase where the API stays up",
                sent - accepted.len()
            );
            refused.push(format!("{} in phase {}", sent - accepted.len(), i + 1));
        }
        let mut row = check_phase(&stack.launcher, &fault.label(), sent, &accepted, settle).await;
        if let Some(back_at) = back_at {
            row.recovered_ms = recovered_ms(&stack.launcher, &accepted, back_at).await;
        }
        println!(
            "  accepted {} / {}; settled {}; lost {}, duplicated {}, stuck {}, wrong {}; max settle {} ms",
            row.accepted,
            row.sent,
            row.settled,
            row.lost,
            row.duplicated,
            row.stuck,
            row.wrong,
            row.max_settle_ms
        );
        match row.recovered_ms {
            Some(ms) if ms > 0 => println!(
                "  the orders accepted during the outage had all settled {ms} ms after it ended"
            ),
            Some(_) => {
                println!("  the orders accepted during the outage had all settled before it ended")
            }
            None => {}
        }
        for (kind, n) in &row.wrong_kinds {
            println!("  wrong: {n} × {kind}");
        }
        rows.push(row);
    }

    let total = rows.iter().fold(
        Row {
            phase: "total".into(),
            ..Row::default()
        },
        |mut t, r| {
            t.sent += r.sent;
            t.accepted += r.accepted;
            t.settled += r.settled;
            t.lost += r.lost;
            t.duplicated += r.duplicated;
            t.stuck += r.stuck;
            t.wrong += r.wrong;
            t.settle_times.extend_from_slice(&r.settle_times);
            t
        },
    );
    let mut total = total;
    total.summarize();
    let log = check_event_log(&stack.launcher, settle).await;
    rows.push(total.clone());
    print_table(&rows);
    println!();
    match &log {
        Ok(report) | Err(report) => println!("{report}"),
    }
    println!("drill took {:.0} s", started.elapsed().as_secs_f64());
    if !exited.is_empty() {
        println!("components that exited on their own: {}", exited.join(", "));
    }
    if !refused.is_empty() {
        println!(
            "orders refused while the API was up: {}",
            refused.join(", ")
        );
    }
    if !bounds.is_empty() {
        println!("bounds that did not hold: {}", bounds.join(", "));
    }
    if !unclean.is_empty() {
        println!("graceful stops that were not: {}", unclean.join(", "));
    }
    let failed = total.lost + total.duplicated + total.stuck + total.wrong > 0
        || log.is_err()
        || !exited.is_empty()
        || !refused.is_empty()
        || !bounds.is_empty()
        || !unclean.is_empty();
    // Processes, private servers and databases go before the exit.
    drop(stack);
    if failed {
        println!(
            "DRILL FAILED: something was lost, duplicated, stuck, wrong or refused, or a component exited on its own or not cleanly on SIGTERM"
        );
        std::process::exit(1);
    }
    println!("drill passed: every accepted order settled exactly once, with the right status");
}
