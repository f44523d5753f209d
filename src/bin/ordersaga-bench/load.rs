//! The load: POST orders over HTTP (closed or open loop), then read from
//! PostgreSQL when each of them settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use super::{BenchArgs, Latencies, Summary, cpu, latencies, latencies_of, rows, rss_mib};

/// Orders of one run go to these users (all valid for the stub user API), so
/// the run's orders are found through the `(user_id, created_at)` index.
const USERS: usize = 64;

/// Most requests an open loop keeps in flight; beyond it a request counts as
/// an error (the client, not the service, would be the bottleneck).
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 4096;

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadResult {
    pub mode: String,
    pub sent: u64,
    pub accepted: u64,
    pub errors: u64,
    /// Answered 503 `overloaded`: refused by admission control (API_MAX_PROCESSING), not errors.
    pub refused: u64,
    /// First few distinct error descriptions.
    pub error_samples: Vec<String>,
    pub load_secs: f64,
    pub post_per_sec: f64,
    pub post_latency: Summary,
    pub settled: u64,
    pub approved: u64,
    pub canceled: u64,
    pub unsettled: u64,
    pub settle_latency: Summary,
    /// Where the settle time went, stage by stage, from the saga events'
    /// timestamps (see `STAGES`).
    pub stages: Vec<Stage>,
    /// Settled orders ÷ (last settle − first order).
    pub settled_per_sec: f64,
    /// The slowest whole second of settling while the load ran (first and last second excluded).
    pub settled_per_sec_worst_second: Option<u64>,
    pub rss_max_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
    /// CPU of every program on the machine while the load ran, busiest first.
    pub cpu: Vec<cpu::Share>,
    /// PostgreSQL rows written per accepted order, by table (the load and the settling).
    pub rows_per_order: Vec<rows::TableRows>,
}

/// One stage of settling an order, and how long the run's orders spent in it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub latency: Summary,
}

/// The stages of a settled order, between the timestamps the saga records:
/// the order's insert, the first `command_sent` event (earlier builds
/// also logged an empty `saga_started` in that transaction, so either marks it), the first and the last
/// `reply_received` event (the last one settles the order, in the same
/// transaction). Each stage includes the relay's pick-up and a broker hop.
const STAGES: [&str; 3] = [
    "accepted → saga started (relay, hop to the orchestrator)",
    "saga started → first reply (relay, hop to a validator, its work, hop back)",
    "first reply → settled (the other reply)",
];

/// Per-stage latencies of the settled orders of `users`.
async fn stages(pool: &PgPool, users: &[String]) -> anyhow::Result<Vec<Stage>> {
    type Times = (
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
        chrono::DateTime<chrono::Utc>,
    );
    // The events are in the saga log, or (a build before it, measured in an
    // A/B with this tool) in saga_events.
    let events_table: Option<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables
          WHERE relname IN ('saga_log', 'saga_events') ORDER BY relname LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some(events_table) = events_table else {
        return Ok(Vec::new());
    };
    let rows: Vec<Times> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o.created_at,
                min(e.occurred_at) FILTER (WHERE e.event_type IN ('command_sent', 'saga_started')),
                min(e.occurred_at) FILTER (WHERE e.event_type = 'reply_received'),
                o.updated_at
         FROM orders o JOIN {events_table} e ON e.order_id = o.id
         WHERE o.user_id = ANY($1) AND o.status <> 'PROCESSING'
         GROUP BY o.id"
    )))
    .bind(users)
    .fetch_all(pool)
    .await?;
    let micros = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        (to - from).num_microseconds().unwrap_or(0).max(0) as u64
    };
    let mut spans: [Latencies; 3] = [latencies(), latencies(), latencies()];
    for (created, started, first_reply, settled) in rows {
        let (Some(started), Some(first_reply)) = (started, first_reply) else {
            continue; // settled without both (e.g. canceled by a deadline)
        };
        spans[0].saturating_record(micros(created, started));
        spans[1].saturating_record(micros(started, first_reply));
        spans[2].saturating_record(micros(first_reply, settled));
    }
    Ok(STAGES
        .into_iter()
        .zip(spans)
        .map(|(name, s)| Stage {
            name,
            latency: Summary::of(&s),
        })
        .collect())
}

struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
    /// The accepted POSTs' latencies (locked only to record one).
    latency: std::sync::Mutex<Latencies>,
}

impl Counters {
    fn new() -> Self {
        Counters {
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            samples: Default::default(),
            latency: std::sync::Mutex::new(latencies()),
        }
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        if s.len() < 5 && !s.contains(&what) {
            s.push(what);
        }
    }
}

fn users(run_id: &str) -> Vec<String> {
    (0..USERS).map(|i| format!("bench-{run_id}-{i}")).collect()
}

/// One POST; the latency of an accepted one, counted from `from` (the
/// scheduled time in an open loop), goes to `c.latency`.
async fn post(client: &reqwest::Client, url: &str, user: &str, from: Instant, c: &Counters) {
    c.sent.fetch_add(1, Ordering::Relaxed);
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("value", "10.00")
        .append_pair("user_id", user)
        .append_pair("installment", "1")
        .append_pair("method", "credit_card")
        .finish();
    let request = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body);
    match request.send().await {
        Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
            let _ = r.bytes().await;
            let us = from.elapsed().as_micros() as u64;
            c.accepted.fetch_add(1, Ordering::Relaxed);
            c.latency.lock().unwrap().saturating_record(us);
        }
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && body.contains("\"overloaded\"")
            {
                c.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            c.error(format!(
                "HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            ));
        }
        Err(e) => c.error(format!("{e}")),
    }
}

/// Warm-up orders, one every `WARM_UP_GAP`: about a second of light load.
const WARM_UP_ORDERS: u64 = 50;
const WARM_UP_GAP: Duration = Duration::from_millis(20);

/// Places a second of light load and waits until all of it settles, so the
/// figures do not include a fresh service whose consumers are still joining
/// their groups and starting to fetch from each partition, or whose pools are
/// still opening connections. (With a single warm-up order, the first two
/// seconds of a 100/s load settled in 1–1.5 s, the rest in about 60 ms.)
/// For the API alone (`settle` false) it only places them.
async fn warm_up(
    client: &reqwest::Client,
    url: &str,
    pool: &PgPool,
    run_id: &str,
    settle: bool,
) -> anyhow::Result<()> {
    let user = vec![format!("bench-{run_id}-warm-up")];
    let c = Counters::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..WARM_UP_ORDERS {
        post(client, url, &user[0], Instant::now(), &c).await;
        tokio::time::sleep(WARM_UP_GAP).await;
    }
    anyhow::ensure!(
        c.accepted.load(Ordering::Relaxed) == WARM_UP_ORDERS,
        "warm-up orders were refused: {:?}",
        c.samples.lock().unwrap()
    );
    while settle && (settled_count(pool, &user).await? as u64) < WARM_UP_ORDERS {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up orders did not settle within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Settled orders a fresh database is given before the first load.
const HISTORY_ORDERS: i64 = 20_000;

/// Gives a fresh database the history and the statistics of a service that
/// has been running a while. PostgreSQL keeps each connection's general plan
/// of a statement until the statistics of its tables change, and autovacuum
/// looks at a database once a minute: in a run on an empty database the
/// plans made in its first seconds, while `orders` was nearly empty, scanned
/// the whole table at every saga write until the end (229 pages a write,
/// 0.8 ms, by 3,000 orders), and those made on an empty `saga_log` the whole
/// log at every relay read (557 pages, 1.7 ms). The orders go in as the
/// service leaves them once their log is trimmed: created PROCESSING and then
/// APPROVED, a day old, under users of their own, each with its
/// `order_created` and `status_changed` log rows, numbered as if written by
/// a transaction older than the relays' positions (so never relayed). A
/// database that has them already is left as it is.
async fn give_history(pool: &PgPool) -> anyhow::Result<()> {
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await?;
    if orders >= HISTORY_ORDERS {
        return Ok(());
    }
    let started = Instant::now();
    // One transaction: admission control never sees them PROCESSING.
    let mut tx = pool.begin().await?;
    sqlx::query(
        "WITH created AS (
             INSERT INTO orders (id, user_id, value, installment, method, status, correlation_id, created_at, updated_at)
             SELECT gen_random_uuid(), 'bench-history-' || (i % 1000), 10.00, 1, 'credit_card', 'PROCESSING',
                    'bench-history', now() - interval '1 day', now() - interval '1 day'
               FROM generate_series(1, $1) AS i
             RETURNING id, user_id, created_at)
         INSERT INTO saga_log (txid, order_id, occurred_at, event_id, event_type, payload)
         SELECT '3'::xid8, id, created_at, gen_random_uuid(), 'order_created',
                jsonb_build_object('user_id', user_id, 'value', '10.00', 'installment', 1,
                                   'method', 'credit_card', 'correlation_id', 'bench-history')
           FROM created
         UNION ALL
         SELECT '3'::xid8, id, created_at + interval '10 ms', gen_random_uuid(), 'status_changed',
                '{\"from\": \"PROCESSING\", \"to\": \"APPROVED\"}'
           FROM created",
    )
    .bind(HISTORY_ORDERS - orders)
    .execute(&mut *tx)
    .await
    .context("cannot give the database its history")?;
    sqlx::query(
        "UPDATE orders SET status = 'APPROVED', updated_at = created_at + interval '10 ms'
          WHERE correlation_id = 'bench-history' AND status = 'PROCESSING'",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::raw_sql("VACUUM ANALYZE orders, saga_log")
        .execute(pool)
        .await
        .context("cannot analyze the service's tables")?;
    eprintln!(
        "bench: the database was given {} settled orders of history and its statistics in {:.1} s",
        HISTORY_ORDERS - orders,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn settled_count(pool: &PgPool, users: &[String]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE user_id = ANY($1) AND status <> 'PROCESSING'",
    )
    .bind(users)
    .fetch_one(pool)
    .await?)
}

pub async fn drive(args: &BenchArgs, pool: &PgPool, run_id: &str) -> anyhow::Result<LoadResult> {
    let users = Arc::new(users(run_id));
    let url = Arc::new(format!("{}/api/orders", args.url.trim_end_matches('/')));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(OPEN_LOOP_MAX_IN_FLIGHT)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    client
        .get(format!("{}/ready", args.url.trim_end_matches('/')))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("the service at {} is not ready", args.url))?;
    if !args.api_only {
        give_history(pool).await?;
    }
    warm_up(&client, &url, pool, run_id, !args.api_only).await?;
    let counters = Arc::new(Counters::new());
    let duration = Duration::from_secs(args.duration_secs);
    let mode = match args.rate {
        Some(rate) => format!("open loop, {rate} orders/s offered"),
        None => format!("closed loop, {} in flight", args.concurrency),
    };
    eprintln!(
        "bench: load: {mode}, {} s, against {}",
        args.duration_secs, args.url
    );

    // Progress and memory, once a second.
    let rss = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let progress = {
        let (c, pool, users, rss, pid) = (
            counters.clone(),
            pool.clone(),
            users.clone(),
            rss.clone(),
            args.pid,
        );
        let begun = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let settled = settled_count(&pool, &users).await.unwrap_or(-1);
                let mem = pid.and_then(rss_mib);
                if let Some(m) = mem {
                    rss.lock().unwrap().push(m);
                }
                eprintln!(
                    "bench: {:>4} s  sent {:>7}  accepted {:>7}  errors {:>5}  settled {:>7}{}",
                    begun.elapsed().as_secs(),
                    c.sent.load(Ordering::Relaxed),
                    c.accepted.load(Ordering::Relaxed),
                    c.errors.load(Ordering::Relaxed),
                    settled,
                    mem.map(|m| format!("  rss {m:.1} MiB")).unwrap_or_default()
                );
            }
        })
    };

    let rows_before = rows::Counts::settled(pool, &rows::Counts::default(), 0).await?;
    let cpu_before = cpu::Snapshot::take();
    let started = Instant::now();
    let deadline = started + duration;
    match args.rate {
        None => {
            let workers: Vec<_> = (0..args.concurrency as usize)
                .map(|w| {
                    let (client, url, users, c) =
                        (client.clone(), url.clone(), users.clone(), counters.clone());
                    tokio::spawn(async move {
                        let mut i = w;
                        while Instant::now() < deadline {
                            post(&client, &url, &users[i % USERS], Instant::now(), &c).await;
                            i += 1;
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await?;
            }
        }
        Some(rate) => {
            anyhow::ensure!(
                rate > 0.0 && rate.is_finite(),
                "--rate must be a positive number"
            );
            let interval = Duration::from_secs_f64(1.0 / rate);
            let slots = Arc::new(Semaphore::new(OPEN_LOOP_MAX_IN_FLIGHT));
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0u32;
            loop {
                let at = started + interval * i;
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!(
                        "more than {OPEN_LOOP_MAX_IN_FLIGHT} requests in flight"
                    ));
                    i += 1;
                    continue;
                };
                let (client, url, user, c) = (
                    client.clone(),
                    url.clone(),
                    users[i as usize % USERS].clone(),
                    counters.clone(),
                );
                tasks.spawn(async move {
                    post(&client, &url, &user, at, &c).await;
                    drop(slot);
                });
                while let Some(done) = tasks.try_join_next() {
                    done?;
                }
                i += 1;
            }
            while let Some(done) = tasks.join_next().await {
                done?;
            }
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    let cpu = cpu::Snapshot::take().since(&cpu_before, args.pid);

    // Wait for every accepted order to settle (or the timeout), then read
    // when each did. The API alone settles nothing: no settle figures.
    let accepted = counters.accepted.load(Ordering::Relaxed);
    let (rows, stages) = if args.api_only {
        (Vec::new(), Vec::new())
    } else {
        let settle_deadline = Instant::now() + Duration::from_secs(args.settle_timeout_secs);
        while (settled_count(pool, &users).await? as u64) < accepted
            && Instant::now() < settle_deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rows: Vec<(
            String,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
        )> = sqlx::query_as(
            "SELECT status, created_at, updated_at FROM orders WHERE user_id = ANY($1)",
        )
        .bind(&*users)
        .fetch_all(pool)
        .await?;
        (rows, stages(pool, &users).await?)
    };
    progress.abort();
    let rows_per_order = rows::Counts::settled(pool, &rows_before, accepted)
        .await?
        .per_order(&rows_before, accepted);

    let terminal: Vec<_> = rows.iter().filter(|r| r.0 != "PROCESSING").collect();
    let settle_micros = latencies_of(
        terminal
            .iter()
            .map(|r| (r.2 - r.1).num_microseconds().unwrap_or(0).max(0) as u64),
    );
    let first = rows.iter().map(|r| r.1).min();
    let last = terminal.iter().map(|r| r.2).max();
    let settled_per_sec = match (first, last) {
        (Some(f), Some(l)) if l > f => {
            terminal.len() as f64 / ((l - f).num_microseconds().unwrap_or(1) as f64 / 1e6)
        }
        _ => 0.0,
    };
    let worst_second = first.and_then(|f| {
        let whole = load_secs.floor() as i64;
        if whole < 3 {
            return None;
        }
        let mut buckets = vec![0u64; whole as usize];
        for r in &terminal {
            let s = (r.2 - f).num_seconds();
            if (0..whole).contains(&s) {
                buckets[s as usize] += 1;
            }
        }
        buckets[1..whole as usize - 1].iter().min().copied()
    });
    let rss = rss.lock().unwrap().clone();
    Ok(LoadResult {
        mode,
        sent: counters.sent.load(Ordering::Relaxed),
        accepted,
        errors: counters.errors.load(Ordering::Relaxed),
        refused: counters.refused.load(Ordering::Relaxed),
        error_samples: counters.samples.lock().unwrap().clone(),
        load_secs,
        post_per_sec: accepted as f64 / load_secs,
        post_latency: Summary::of(&counters.latency.lock().unwrap()),
        settled: terminal.len() as u64,
        approved: terminal.iter().filter(|r| r.0 == "APPROVED").count() as u64,
        canceled: terminal.iter().filter(|r| r.0 == "CANCELED").count() as u64,
        unsettled: (rows.len() - terminal.len()) as u64,
        settle_latency: Summary::of(&settle_micros),
        stages,
        settled_per_sec,
        settled_per_sec_worst_second: worst_second,
        rss_max_mib: rss.iter().copied().reduce(f64::max),
        rss_end_mib: args.pid.and_then(rss_mib),
        cpu,
        rows_per_order,
    })
}
