//! `SagaStore` on PostgreSQL: each decision in a transaction, with the order
//! row locked so decisions about one order never interleave.
//!
//! Decisions are written by group commit: `transact` queues its decision,
//! and a few writer tasks each take every decision queued so far (up to
//! `saga_batch_max`, one per order) and apply them in one transaction. Under
//! light load a batch holds one decision and nothing waits; under heavy load
//! one commit (one WAL flush, six round trips) stands for many decisions
//! instead of each paying its own. If a batch fails, its decisions are
//! retried one by one, so one bad decision cannot fail the others.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::application::ports::{
    SagaContext, SagaDecision, SagaOutcome, SagaStore, SagaWrite, StoreError,
};
use crate::domain::{Order, OrderId, Saga};

use super::group::{GroupQueue, Jobs, NotQueued, next_batch};
use super::orders::{ORDER_COLUMNS, OrderRow};
use super::{PgStore, Wake, classify, column, corrupt};

#[derive(sqlx::FromRow)]
struct LockedOrder {
    #[sqlx(flatten)]
    order: OrderRow,
    correlation_id: String,
}

/// Locks and reads the orders `$1`, in id order so that two batches that
/// share orders cannot deadlock. The sagas are read by a statement of their
/// own, after the lock: a row joined here but not locked could come back as
/// it was before a concurrent decision about the same order committed
/// (PostgreSQL re-reads only the locked rows after waiting for a lock).
static LOCK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ORDER_COLUMNS}, correlation_id FROM orders
         WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    )
});

/// Records message ids as processed; returns those that were new.
const RECORD_SQL: &str = "INSERT INTO processed_messages (consumer, message_id)
     SELECT * FROM UNNEST($1::text[], $2::uuid[])
     ON CONFLICT DO NOTHING RETURNING consumer, message_id";

const SAGAS_SQL: &str = "SELECT order_id, state FROM sagas WHERE order_id = ANY($1)";

/// Writes a batch of decisions: the sagas, the orders' settlements (only
/// from PROCESSING), the outbox messages (reserved for the hand-off's lease,
/// if any) and the saga events; returns how many orders were settled. One
/// round trip.
const WRITE_SQL: &str = "WITH saga AS (
         INSERT INTO sagas (order_id, state, next_deadline)
         SELECT * FROM UNNEST($1::uuid[], $2::jsonb[], $3::timestamptz[])
         ON CONFLICT (order_id) DO UPDATE SET state = EXCLUDED.state,
             next_deadline = EXCLUDED.next_deadline, updated_at = now()
     ), settled AS (
         UPDATE orders o SET status = s.status, cancel_reason = s.reason, updated_at = $7
         FROM UNNEST($4::uuid[], $5::text[], $6::text[]) AS s (id, status, reason)
         WHERE o.id = s.id AND o.status = 'PROCESSING'
         RETURNING 1
     ), messages AS (
         INSERT INTO outbox (message_id, topic, message_key, message_type, correlation_id, payload, created_at, handed_until)
         SELECT *, now() + $20::interval
         FROM UNNEST($8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::timestamptz[])
     ), events AS (
         INSERT INTO saga_events (event_id, order_id, event_type, payload, occurred_at)
         SELECT * FROM UNNEST($15::uuid[], $16::uuid[], $17::text[], $18::jsonb[], $19::timestamptz[])
     )
     SELECT count(*) FROM settled";

/// One queued decision and where its outcome goes.
struct Job {
    order_id: OrderId,
    dedupe: Option<(String, Uuid)>,
    decide: SagaDecision,
    done: oneshot::Sender<Result<SagaOutcome, StoreError>>,
}

/// The decisions waiting for a writer. The writers start with the first
/// decision (inside the runtime) and stop when the last `PgStore` clone goes.
pub(super) struct SagaQueue {
    queue: GroupQueue<Job>,
    writers: usize,
    batch_max: usize,
}

impl SagaQueue {
    pub(super) fn new(writers: usize, batch_max: usize) -> Self {
        Self {
            // Decisions come from consumers (a few dozen messages in flight
            // each) and the sweeper: this bound is never reached in normal work.
            queue: GroupQueue::new(writers.max(1) * batch_max.max(1) * 16),
            writers: writers.max(1),
            batch_max: batch_max.max(1),
        }
    }

    fn submit(&self, pool: &PgPool, wake: &Wake, job: Job) {
        let start = |jobs: Jobs<Job>| {
            for _ in 0..self.writers {
                let writer = Writer {
                    pool: pool.clone(),
                    wake: wake.clone(),
                    batch_max: self.batch_max,
                };
                tokio::spawn(writer.run(jobs.clone()));
            }
        };
        match self.queue.submit(job, start) {
            Ok(()) => {}
            Err(NotQueued::Full(job)) => {
                let _ = job.done.send(Err(StoreError::Overloaded(
                    "too many saga decisions waiting for a writer".into(),
                )));
            }
            Err(NotQueued::Stopped(job)) => {
                let _ = job.done.send(Err(StoreError::Other(anyhow::anyhow!(
                    "the saga writers have stopped"
                ))));
            }
        }
    }
}

struct Writer {
    pool: PgPool,
    wake: Wake,
    batch_max: usize,
}

impl Writer {
    async fn run(self, jobs: Jobs<Job>) {
        while let Some(mut batch) = next_batch(&jobs, self.batch_max).await {
            // One decision per order and transaction: a second one about the
            // same order goes in the next round, and sees what the first wrote.
            while !batch.is_empty() {
                let mut seen = HashSet::new();
                let (round, later): (Vec<Job>, Vec<Job>) =
                    batch.into_iter().partition(|j| seen.insert(j.order_id));
                self.apply(round).await;
                batch = later;
            }
        }
    }

    /// Applies a round and answers each job. A decision that fails is
    /// answered with its error and the rest go again without it; if the
    /// transaction itself fails, the decisions are retried one by one.
    async fn apply(&self, round: Vec<Job>) {
        metrics::histogram!(crate::metrics::SAGA_BATCH_SIZE).record(round.len() as f64);
        let mut outcomes: Vec<Option<Result<SagaOutcome, StoreError>>> =
            std::iter::repeat_with(|| None).take(round.len()).collect();
        let mut pending: Vec<usize> = (0..round.len()).collect();
        while !pending.is_empty() {
            let jobs: Vec<&Job> = pending.iter().map(|&i| &round[i]).collect();
            match self.transact(&jobs).await {
                Ok(Batch::Committed(done)) => {
                    for (&i, outcome) in pending.iter().zip(done) {
                        outcomes[i] = Some(Ok(outcome));
                    }
                    pending.clear();
                }
                Ok(Batch::DecisionsFailed(failed)) => {
                    for (at, e) in failed.into_iter().rev() {
                        outcomes[pending.remove(at)] = Some(Err(e));
                    }
                }
                Err(e @ StoreError::Unavailable(_)) => {
                    let detail = e.to_string();
                    for i in pending.drain(..) {
                        outcomes[i] = Some(Err(StoreError::Unavailable(detail.clone())));
                    }
                }
                Err(e) if pending.len() == 1 => outcomes[pending.remove(0)] = Some(Err(e)),
                Err(e) => {
                    tracing::debug!(error = %e, decisions = pending.len(), "saga batch failed; applying its decisions one by one");
                    for i in pending.drain(..) {
                        outcomes[i] = Some(match self.transact(&[&round[i]]).await {
                            Ok(Batch::Committed(mut one)) => Ok(one.remove(0)),
                            Ok(Batch::DecisionsFailed(mut one)) => Err(one.remove(0).1),
                            Err(e) => Err(e),
                        });
                    }
                }
            }
        }
        for (job, outcome) in round.into_iter().zip(outcomes) {
            let outcome = outcome.expect("every decision is answered");
            // The caller may have gone (shutdown); the decision stands anyway.
            let _ = job.done.send(outcome);
        }
    }

    /// One transaction for `jobs` (distinct orders). If a decision fails on
    /// its own data, nothing is committed and the failures are returned by
    /// their position in `jobs`; an error of the transaction fails them all.
    async fn transact(&self, jobs: &[&Job]) -> Result<Batch, StoreError> {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.order_id.0).collect();
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let locked: Vec<LockedOrder> = sqlx::query_as(sqlx::AssertSqlSafe(LOCK_SQL.as_str()))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        let mut orders: HashMap<Uuid, LockedOrder> =
            locked.into_iter().map(|l| (l.order.id, l)).collect();
        let (consumers, messages): (Vec<&str>, Vec<Uuid>) = jobs
            .iter()
            .filter(|j| orders.contains_key(&j.order_id.0))
            .filter_map(|j| j.dedupe.as_ref().map(|(c, id)| (c.as_str(), *id)))
            .unzip();
        let recorded: HashSet<(String, Uuid)> = if messages.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_as::<_, (String, Uuid)>(RECORD_SQL)
                .bind(&consumers)
                .bind(&messages)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?
                .into_iter()
                .collect()
        };
        let mut sagas: HashMap<Uuid, serde_json::Value> =
            sqlx::query_as::<_, (Uuid, serde_json::Value)>(SAGAS_SQL)
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?
                .into_iter()
                .collect();

        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut failed = Vec::new();
        let mut writes = Vec::new();
        for (at, job) in jobs.iter().enumerate() {
            let Some(locked) = orders.remove(&job.order_id.0) else {
                outcomes.push(SagaOutcome::UnknownOrder);
                continue;
            };
            if job.dedupe.as_ref().is_some_and(|d| !recorded.contains(d)) {
                outcomes.push(SagaOutcome::Duplicate);
                continue;
            }
            match decide(job, locked, sagas.remove(&job.order_id.0)) {
                Ok(Some(write)) => {
                    outcomes.push(SagaOutcome::Applied);
                    writes.push((job.order_id, write));
                }
                // Still committed: the message id is now recorded as processed.
                Ok(None) => outcomes.push(SagaOutcome::NothingToDo),
                Err(e) => failed.push((at, e)),
            }
        }
        if !failed.is_empty() {
            // Its message id must not stay recorded: the message is to be retried.
            tx.rollback().await.map_err(classify)?;
            return Ok(Batch::DecisionsFailed(failed));
        }
        if !writes.is_empty() {
            let settling = writes.iter().filter(|(_, w)| w.settle.is_some()).count() as i64;
            let settled = write(&mut tx, &writes, self.wake.lease()).await?;
            // Guarded twice: by the WHERE clause, and by the transition trigger.
            if settled != settling {
                tx.rollback().await.map_err(classify)?;
                return Err(StoreError::Other(anyhow::anyhow!(
                    "{} of {settling} orders were no longer PROCESSING when their saga settled them",
                    settling - settled
                )));
            }
        }
        tx.commit().await.map_err(classify)?;
        let events = writes.iter().any(|(_, w)| !w.events.is_empty());
        let messages = writes.into_iter().flat_map(|(_, w)| w.outbox).collect();
        self.wake.committed(messages, events);
        Ok(Batch::Committed(outcomes))
    }
}

/// How a batch's transaction ended, when it did not fail as a whole.
enum Batch {
    /// Committed: each decision's outcome, in order.
    Committed(Vec<SagaOutcome>),
    /// Rolled back because these decisions (by position) failed on their own data.
    DecisionsFailed(Vec<(usize, StoreError)>),
}

/// Runs a job's decision on its locked order and saga. A decision that
/// panics fails its job only, not the writer.
fn decide(
    job: &Job,
    locked: LockedOrder,
    state: Option<serde_json::Value>,
) -> Result<Option<SagaWrite>, StoreError> {
    let saga = state
        .map(serde_json::from_value::<Saga>)
        .transpose()
        .map_err(|e| corrupt("saga state", e))?;
    let ctx = SagaContext {
        order: Order::try_from(locked.order)?,
        correlation_id: locked.correlation_id,
        saga,
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.decide)(&ctx))).map_err(|_| {
        StoreError::Other(anyhow::anyhow!(
            "the saga decision for order {} panicked",
            job.order_id
        ))
    })
}

/// Writes the batch's decisions in one statement; returns how many orders it settled.
async fn write(
    tx: &mut sqlx::PgConnection,
    writes: &[(OrderId, SagaWrite)],
    lease: Option<std::time::Duration>,
) -> Result<i64, StoreError> {
    let states = writes
        .iter()
        .map(|(_, w)| serde_json::to_value(&w.saga))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Other(e.into()))?;
    let settles: Vec<_> = writes
        .iter()
        .filter_map(|(id, w)| w.settle.map(|s| (id.0, s)))
        .collect();
    let messages: Vec<_> = writes.iter().flat_map(|(_, w)| &w.outbox).collect();
    let events: Vec<_> = writes.iter().flat_map(|(_, w)| &w.events).collect();
    sqlx::query_scalar(WRITE_SQL)
        .bind(column(writes, |(id, _)| id.0))
        .bind(states)
        .bind(column(writes, |(_, w)| w.saga.next_deadline()))
        .bind(column(&settles, |(id, _)| *id))
        .bind(column(&settles, |(_, s)| s.status().as_str()))
        .bind(column(&settles, |(_, s)| {
            s.cancel_reason().map(|r| r.as_str())
        }))
        .bind(Utc::now())
        .bind(column(&messages, |m| m.message_id))
        .bind(column(&messages, |m| m.topic.name()))
        .bind(column(&messages, |m| m.key.as_str()))
        .bind(column(&messages, |m| m.message_type.as_str()))
        .bind(column(&messages, |m| m.correlation_id.as_str()))
        .bind(column(&messages, |m| m.payload.clone()))
        .bind(column(&messages, |m| m.time))
        .bind(column(&events, |e| e.event_id))
        .bind(column(&events, |e| e.order_id.0))
        .bind(column(&events, |e| e.kind.as_str()))
        .bind(column(&events, |e| e.payload.clone()))
        .bind(column(&events, |e| e.at))
        .bind(lease)
        .fetch_one(tx)
        .await
        .map_err(classify)
}

#[async_trait]
impl SagaStore for PgStore {
    async fn transact(
        &self,
        order_id: OrderId,
        dedupe: Option<(&str, Uuid)>,
        decide: SagaDecision,
    ) -> Result<SagaOutcome, StoreError> {
        let (done, outcome) = oneshot::channel();
        let job = Job {
            order_id,
            dedupe: dedupe.map(|(consumer, id)| (consumer.to_owned(), id)),
            decide,
            done,
        };
        self.sagas.submit(&self.pool, &self.wake, job);
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Other(anyhow::anyhow!(
                "the saga writer stopped before deciding on order {order_id}"
            )))
        })
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        orphaned_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "(SELECT order_id FROM sagas WHERE next_deadline <= $1 ORDER BY next_deadline LIMIT $3)
             UNION
             (SELECT o.id FROM orders o
               WHERE o.status = 'PROCESSING' AND o.created_at <= $2
                 AND NOT EXISTS (SELECT 1 FROM sagas s WHERE s.order_id = o.id)
               ORDER BY o.created_at LIMIT $3)",
        )
        .bind(now)
        .bind(orphaned_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows.into_iter().map(|(id,)| OrderId(id)).collect())
    }

    async fn purge(
        &self,
        processed_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let processed = sqlx::query("DELETE FROM processed_messages WHERE processed_at < $1")
            .bind(processed_before)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        let keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        Ok(processed + keys)
    }
}
