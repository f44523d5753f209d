//! `SagaStore` on PostgreSQL: each decision in a transaction, with the order
//! row (which carries the saga) locked, so decisions about one order never
//! interleave.
//!
//! Decisions are written by group commit: `transact` queues its decision,
//! and a few writer tasks each take every decision queued so far (up to
//! `saga_batch_max`) and apply them in one transaction of four round trips
//! (begin, lock and read the orders, write, commit), whatever their number.
//! Several decisions about one order in a batch (both replies arrived
//! together, or were handed in together by `transact_all`) run one after the
//! other on the state the one before left, and the order is written once.
//! `transact_all`'s decisions are one job, so one batch. A decision that fails (an unreadable row,
//! a panic) fails alone; if the write fails, the decisions are retried one by
//! one, so one bad decision cannot fail the others.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::application::ports::{
    LogEntry, SagaContext, SagaDecision, SagaOutcome, SagaStore, SagaWrite, StoreError,
};
use crate::domain::{Order, OrderId, Saga, Settlement};

use super::group::{GroupQueue, Jobs, NotQueued, next_batch};
use super::orders::{ORDER_COLUMNS, OrderRow};
use super::{PgStore, Wake, classify, column, corrupt};

#[derive(sqlx::FromRow)]
struct LockedOrder {
    #[sqlx(flatten)]
    order: OrderRow,
    correlation_id: String,
    saga: Option<serde_json::Value>,
}

/// Locks and reads the orders `$1` with their sagas, in id order so that two
/// batches that share orders cannot deadlock.
static LOCK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ORDER_COLUMNS}, correlation_id, saga FROM orders
         WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    )
});

/// Writes a batch of decisions in one statement: each order's saga (and its
/// settlement, only from PROCESSING) in place, and the log entries. Returns
/// how many orders it updated and how many of them it settled.
const WRITE_SQL: &str = "WITH updated AS (
         UPDATE orders o
            SET saga = w.saga, next_deadline = w.next_deadline,
                status = coalesce(w.status, o.status),
                cancel_reason = CASE WHEN w.status IS NULL THEN o.cancel_reason ELSE w.reason END,
                updated_at = CASE WHEN w.status IS NULL THEN o.updated_at ELSE $6 END
           FROM UNNEST($1::uuid[], $2::jsonb[], $3::timestamptz[], $4::text[], $5::text[])
                AS w (id, saga, next_deadline, status, reason)
          WHERE o.id = w.id AND (w.status IS NULL OR o.status = 'PROCESSING')
         RETURNING w.status IS NOT NULL AS settled
     ), logged AS (
         INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload,
                               message_id, topic, message_type, correlation_id, message)
         SELECT * FROM UNNEST($7::uuid[], $8::timestamptz[], $9::uuid[], $10::text[], $11::jsonb[],
                              $12::uuid[], $13::text[], $14::text[], $15::text[], $16::jsonb[])
     )
     SELECT count(*), count(*) FILTER (WHERE settled) FROM updated";

/// Queued decisions about one order (taken in order, in one transaction),
/// and where their outcomes go.
struct Job {
    order_id: OrderId,
    decisions: Vec<SagaDecision>,
    done: oneshot::Sender<Vec<Result<SagaOutcome, StoreError>>>,
}

/// Each of `job`'s decisions failed with `e`.
fn failed(job: &Job, e: impl Fn() -> StoreError) -> Vec<Result<SagaOutcome, StoreError>> {
    job.decisions.iter().map(|_| Err(e())).collect()
}

/// `job`'s transaction failed with `e`: its first decision gets `e`, any
/// other the same kind of error (so the consumer retries each alike).
fn spread(job: &Job, e: StoreError) -> Vec<Result<SagaOutcome, StoreError>> {
    let mut outcomes = failed(job, || e.again());
    if let Some(first) = outcomes.first_mut() {
        *first = Err(e);
    }
    outcomes
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
                let outcomes = failed(&job, || {
                    StoreError::Overloaded("too many saga decisions waiting for a writer".into())
                });
                let _ = job.done.send(outcomes);
            }
            Err(NotQueued::Stopped(job)) => {
                let outcomes = failed(&job, || {
                    StoreError::Other(anyhow::anyhow!("the saga writers have stopped"))
                });
                let _ = job.done.send(outcomes);
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
        while let Some(batch) = next_batch(&jobs, self.batch_max).await {
            self.apply(batch).await;
        }
    }

    /// Applies a batch and answers each job; if the transaction fails as a
    /// whole, the decisions are retried one by one.
    async fn apply(&self, batch: Vec<Job>) {
        let decisions: usize = batch.iter().map(|j| j.decisions.len()).sum();
        metrics::histogram!(crate::metrics::SAGA_BATCH_SIZE).record(decisions as f64);
        let jobs: Vec<&Job> = batch.iter().collect();
        let outcomes = match self.transact(&jobs).await {
            Ok(outcomes) => outcomes,
            Err(e @ StoreError::Unavailable(_)) => {
                jobs.iter().map(|job| failed(job, || e.again())).collect()
            }
            Err(e) if jobs.len() == 1 => vec![spread(jobs[0], e)],
            Err(e) => {
                tracing::debug!(error = %e, jobs = jobs.len(), "saga batch failed; applying its jobs one by one");
                let mut outcomes = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    outcomes.push(match self.transact(&[job]).await {
                        Ok(mut one) => one.remove(0),
                        Err(e) => spread(job, e),
                    });
                }
                outcomes
            }
        };
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            // The caller may have gone (shutdown); the decision stands anyway.
            let _ = job.done.send(outcome);
        }
    }

    /// One transaction for `jobs`: locks their orders, runs each decision on
    /// its order's current state (in the batch's order, so a second decision
    /// about an order sees what the first decided), and writes each order
    /// once with every entry. Each job's outcomes come back in order; an
    /// error of the transaction fails them all.
    async fn transact(
        &self,
        jobs: &[&Job],
    ) -> Result<Vec<Vec<Result<SagaOutcome, StoreError>>>, StoreError> {
        let mut ids: Vec<Uuid> = jobs.iter().map(|j| j.order_id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let locked: Vec<LockedOrder> = sqlx::query_as(sqlx::AssertSqlSafe(LOCK_SQL.as_str()))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        let mut current: HashMap<Uuid, Result<Current, String>> = locked
            .into_iter()
            .map(|l| (l.order.id, Current::read(l).map_err(|e| e.to_string())))
            .collect();

        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let order = current.get_mut(&job.order_id.0);
            let decided = match order {
                None => job
                    .decisions
                    .iter()
                    .map(|_| Ok(SagaOutcome::UnknownOrder))
                    .collect(),
                Some(Err(unreadable)) => {
                    failed(job, || StoreError::Other(anyhow::anyhow!("{unreadable}")))
                }
                Some(Ok(c)) => job
                    .decisions
                    .iter()
                    .map(|decide| c.decide(job.order_id, decide))
                    .collect(),
            };
            outcomes.push(decided);
        }
        let writes: Vec<(OrderId, SagaWrite)> = current
            .into_values()
            .filter_map(Result::ok)
            .filter_map(|c| c.write.map(|w| (c.ctx.order.id, w)))
            .collect();
        if writes.is_empty() {
            // Nothing to write: the orders' locks go with the transaction.
            tx.rollback().await.map_err(classify)?;
            return Ok(outcomes);
        }
        let settling = writes.iter().filter(|(_, w)| w.settle.is_some()).count() as i64;
        let (updated, settled) = write(&mut tx, &writes).await?;
        // Guarded twice: by the WHERE clause, and by the transition trigger.
        if updated != writes.len() as i64 || settled != settling {
            tx.rollback().await.map_err(classify)?;
            return Err(StoreError::Other(anyhow::anyhow!(
                "{} of {settling} orders were no longer PROCESSING when their saga settled them",
                settling - settled
            )));
        }
        tx.commit().await.map_err(classify)?;
        self.wake
            .committed(writes.iter().any(|(_, w)| w.messages().next().is_some()));
        Ok(outcomes)
    }
}

/// An order locked in a transaction: what its decisions see, and what they
/// have decided so far.
struct Current {
    ctx: SagaContext,
    write: Option<SagaWrite>,
}

impl Current {
    fn read(locked: LockedOrder) -> Result<Self, StoreError> {
        let saga = locked
            .saga
            .map(serde_json::from_value::<Saga>)
            .transpose()
            .map_err(|e| corrupt("saga state", e))?;
        Ok(Self {
            ctx: SagaContext {
                order: Order::try_from(locked.order)?,
                correlation_id: locked.correlation_id,
                saga,
            },
            write: None,
        })
    }

    /// Runs a decision on the order as the decisions before it left it.
    /// A decision that panics fails alone.
    fn decide(
        &mut self,
        order_id: OrderId,
        decide: &SagaDecision,
    ) -> Result<SagaOutcome, StoreError> {
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(&self.ctx)))
            .map_err(|_| {
                StoreError::Other(anyhow::anyhow!(
                    "the saga decision for order {order_id} panicked"
                ))
            })?;
        let Some(w) = decided else {
            return Ok(SagaOutcome::NothingToDo);
        };
        self.ctx.saga = Some(w.saga.clone());
        if let Some(s) = w.settle {
            self.ctx.order.status = s.status();
            self.ctx.order.cancel_reason = s.cancel_reason();
        }
        match &mut self.write {
            None => self.write = Some(w),
            Some(merged) => {
                merged.saga = w.saga;
                merged.settle = merged.settle.or(w.settle);
                merged.entries.extend(w.entries);
            }
        }
        Ok(SagaOutcome::Applied)
    }
}

fn message(e: &LogEntry) -> Option<&crate::application::messages::OutboundMessage> {
    e.message.as_ref()
}

/// Writes the batch's decisions in one statement; returns how many orders
/// it updated and how many of them it settled.
async fn write(
    tx: &mut sqlx::PgConnection,
    writes: &[(OrderId, SagaWrite)],
) -> Result<(i64, i64), StoreError> {
    let states = writes
        .iter()
        .map(|(_, w)| serde_json::to_value(&w.saga))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Other(e.into()))?;
    let settle = |w: &SagaWrite| w.settle.map(Settlement::status).map(|s| s.as_str());
    let reason = |w: &SagaWrite| w.settle.and_then(|s| s.cancel_reason()).map(|r| r.as_str());
    let entries: Vec<(&OrderId, &LogEntry)> = writes
        .iter()
        .flat_map(|(id, w)| w.entries.iter().map(move |e| (id, e)))
        .collect();
    sqlx::query_as::<_, (i64, i64)>(WRITE_SQL)
        .bind(column(writes, |(id, _)| id.0))
        .bind(states)
        .bind(column(writes, |(_, w)| w.saga.next_deadline()))
        .bind(column(writes, |(_, w)| settle(w)))
        .bind(column(writes, |(_, w)| reason(w)))
        .bind(Utc::now())
        .bind(column(&entries, |(id, _)| id.0))
        .bind(column(&entries, |(_, e)| e.event.at))
        .bind(column(&entries, |(_, e)| e.event.event_id))
        .bind(column(&entries, |(_, e)| e.event.kind.as_str()))
        .bind(column(&entries, |(_, e)| e.event.payload.clone()))
        .bind(column(&entries, |(_, e)| message(e).map(|m| m.message_id)))
        .bind(column(&entries, |(_, e)| {
            message(e).map(|m| m.topic.name())
        }))
        .bind(column(&entries, |(_, e)| {
            message(e).map(|m| m.message_type.as_str())
        }))
        .bind(column(&entries, |(_, e)| {
            message(e).map(|m| m.correlation_id.as_str())
        }))
        .bind(column(&entries, |(_, e)| {
            message(e).map(|m| m.payload.clone())
        }))
        .fetch_one(tx)
        .await
        .map_err(classify)
}

#[async_trait]
impl SagaStore for PgStore {
    async fn transact(
        &self,
        order_id: OrderId,
        decide: SagaDecision,
    ) -> Result<SagaOutcome, StoreError> {
        self.transact_all(order_id, vec![decide])
            .await
            .pop()
            .expect("one outcome per decision")
    }

    async fn transact_all(
        &self,
        order_id: OrderId,
        decisions: Vec<SagaDecision>,
    ) -> Vec<Result<SagaOutcome, StoreError>> {
        let n = decisions.len();
        let (done, outcome) = oneshot::channel();
        let job = Job {
            order_id,
            decisions,
            done,
        };
        self.sagas.submit(&self.pool, &self.wake, job);
        outcome.await.unwrap_or_else(|_| {
            (0..n)
                .map(|_| {
                    Err(StoreError::Other(anyhow::anyhow!(
                        "the saga writer stopped before deciding on order {order_id}"
                    )))
                })
                .collect()
        })
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        orphaned_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError> {
        // Among the PROCESSING orders (their partial index): admission control
        // keeps them few, so no index on the deadline is needed.
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM orders
              WHERE status = 'PROCESSING'
                AND (next_deadline <= $1 OR (saga IS NULL AND created_at <= $2))
              ORDER BY created_at LIMIT $3",
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
        now: DateTime<Utc>,
        log_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        // Small batches, so no long transaction holds the relays' horizon back.
        let mut trimmed = 0;
        for _ in 0..TRIM_BATCHES {
            let n = self.trim_log(log_before, TRIM_BATCH).await?;
            trimmed += n;
            if n < TRIM_BATCH as u64 {
                break;
            }
        }
        Ok(keys + trimmed)
    }
}

/// Saga-log rows deleted per statement, and statements per housekeeping round.
const TRIM_BATCH: i64 = 1000;
const TRIM_BATCHES: usize = 20;
