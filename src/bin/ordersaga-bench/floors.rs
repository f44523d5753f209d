//! The floors: what the dependencies cost when ordersaga does nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Summary, latencies};
use ordersaga::adapters::kafka::{self, ConsumerSettings, KafkaPublisher, KafkaSettings};
use ordersaga::application::messages::{
    HEADER_MESSAGE_ID, InboundMessage, MessageType, OutboundMessage, Topic,
};
use ordersaga::application::ports::{HandleError, MessageHandler, MessagePublisher};
use ordersaga::domain::OrderId;

/// Floor (a): what a new order costs the database at the least: an order row
/// and its outbox row, inserted in one transaction (one statement, one
/// commit), from `connections` connections for `duration`. The tables are
/// scratch copies shaped like `orders` (its primary key and the user index)
/// and the saga log (its primary key), with nothing else. Each of the
/// `connections` keeps its connection for the whole measure, as pgbench
/// does: a statement run on the pool gives its connection back with a check,
/// a second round trip that the service's hot path does not pay
/// (`postgres/warm.rs`); until the twenty-fourth session the floor paid it,
/// and measured a third to a half lower.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InsertFloor {
    pub connections: u32,
    pub per_sec: f64,
    pub latency: Summary,
}

pub async fn postgres_insert(
    pool: &PgPool,
    run_id: &str,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<InsertFloor> {
    let (orders, log) = (
        format!("bench_floor_{run_id}"),
        format!("bench_floor_log_{run_id}"),
    );
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {orders} (id uuid PRIMARY KEY, user_id text NOT NULL, value numeric(14, 2) NOT NULL,
                               created_at timestamptz NOT NULL);
         CREATE INDEX ON {orders} (user_id, created_at DESC);
         CREATE TABLE {log} (txid xid8 NOT NULL DEFAULT pg_current_xact_id(), seq bigint GENERATED ALWAYS AS IDENTITY,
                             order_id uuid NOT NULL, payload jsonb NOT NULL, PRIMARY KEY (txid, seq));"
    )))
    .execute(pool)
    .await
    .context("cannot create the floor tables")?;
    let insert = format!(
        "WITH o AS (INSERT INTO {orders} (id, user_id, value, created_at) VALUES ($1, $2, 10.00, now()))
         INSERT INTO {log} (order_id, payload) VALUES ($1, '{{\"value\": \"10.00\"}}')"
    );
    let started = Instant::now();
    let deadline = started + duration;
    // One histogram for every connection (locked only to record one).
    let all = Arc::new(Mutex::new(latencies()));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (pool, insert, all) = (pool.clone(), insert.clone(), all.clone());
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    sqlx::query(AssertSqlSafe(insert.clone()))
                        .bind(Uuid::new_v4())
                        .bind("floor")
                        .execute(&mut *conn)
                        .await?;
                    let us = t.elapsed().as_micros() as u64;
                    all.lock().unwrap().saturating_record(us);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let latency = Summary::of(&all.lock().unwrap());
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE {orders}; DROP TABLE {log};"
    )))
    .execute(pool)
    .await
    .ok();
    Ok(InsertFloor {
        connections,
        per_sec: latency.count as f64 / elapsed,
        latency,
    })
}

/// Hands each consumed message's id to whoever waits for it.
struct Arrivals(Mutex<HashMap<Uuid, oneshot::Sender<Instant>>>);

#[async_trait]
impl MessageHandler for Arrivals {
    async fn handle(&self, message: &InboundMessage) -> Result<(), HandleError> {
        let now = Instant::now();
        if let Some(id) = message
            .header(HEADER_MESSAGE_ID)
            .and_then(|v| Uuid::parse_str(v).ok())
            && let Some(tx) = self.0.lock().unwrap().remove(&id)
        {
            let _ = tx.send(now);
        }
        Ok(())
    }
}

/// Floor (b): one message at a time, produced and consumed through the same
/// adapter code and client settings the saga uses, on a private topic prefix.
pub async fn kafka_round_trip(
    mut settings: KafkaSettings,
    run_id: &str,
    round_trips: usize,
) -> anyhow::Result<Summary> {
    settings.topic_prefix = format!("bench-{run_id}.");
    settings.group_prefix = format!("bench-{run_id}.");
    let settings = Arc::new(settings);
    kafka::ensure_topics(&settings).await?;
    let publisher = KafkaPublisher::new(settings.clone(), "ordersaga-bench")?;
    let arrivals = Arc::new(Arrivals(Mutex::new(HashMap::new())));
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(kafka::run_consumer(
        settings.clone(),
        ConsumerSettings::new("bench-floor", vec![Topic::OrdersCreated]),
        arrivals.clone(),
        Arc::new(publisher.clone()),
        stop.clone(),
    ));

    let one = |wait: Duration| {
        let publisher = publisher.clone();
        let arrivals = arrivals.clone();
        async move {
            let id = Uuid::new_v4();
            let (tx, rx) = oneshot::channel();
            arrivals.0.lock().unwrap().insert(id, tx);
            let message = OutboundMessage::new(
                id,
                Topic::OrdersCreated,
                OrderId::new(),
                MessageType::OrderCreated,
                "bench",
                &serde_json::json!({}),
            );
            let sent = Instant::now();
            publisher.publish(std::slice::from_ref(&message)).await?;
            let arrived = tokio::time::timeout(wait, rx).await;
            arrivals.0.lock().unwrap().remove(&id);
            anyhow::Ok(match arrived {
                Ok(Ok(at)) => Some(at.duration_since(sent)),
                _ => None,
            })
        }
    };

    // Warm up: the consumer's first assignment takes about half a session timeout.
    let warm_until = Instant::now() + Duration::from_secs(60);
    let result = async {
        loop {
            if one(Duration::from_secs(1)).await?.is_some() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < warm_until,
                "no message came back through the broker within 60 s"
            );
        }
        let mut rtts = latencies();
        for _ in 0..round_trips {
            let rtt = one(Duration::from_secs(5))
                .await?
                .context("a round trip took longer than 5 s")?;
            rtts.saturating_record(rtt.as_micros() as u64);
        }
        anyhow::Ok(Summary::of(&rtts))
    }
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer).await;
    if let Err(e) = kafka::delete_topics(&settings).await {
        eprintln!("bench: could not delete the floor's topics: {e:#}");
    }
    result
}
