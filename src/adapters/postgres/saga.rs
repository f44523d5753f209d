//! `SagaStore` on PostgreSQL: each decision runs on the order's current
//! state and is written only if the order has not changed since, so
//! decisions about one order never interleave (optimistic concurrency: the
//! row's `xmin` is its version).
//!
//! Decisions are written by group commit: `transact` queues its decision,
//! and a few writer tasks each take every decision queued so far (up to
//! `saga_batch_max`) and write them in one statement, its own transaction,
//! whatever their number. The writers remember the state and version each
//! order's last write left (`Known`), so a decision about an order this
//! process wrote last needs no read: one round trip. So do the orders this
//! store inserted (`SagaQueue::inserted`): in a process that runs the API and
//! the orchestrator, a saga starts without a read. Otherwise one unlocked
//! read comes first. An order that changed meanwhile (another process, the
//! other writer) is not written; its decisions are taken again on a fresh
//! read. Several decisions about one order in a batch (both replies arrived
//! together, or were handed in together by `transact_all`) run one after the
//! other on the state the one before left, and the order is written once.
//! `transact_all`'s decisions are one job, so one batch. A decision that fails (an unreadable row,
//! a panic) fails alone; if the write fails, the decisions are retried one by
//! one, so one bad decision cannot fail the others.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::application::ports::{
    LogEntry, SagaContext, SagaDecision, SagaOutcome, SagaStore, SagaWrite, StoreError,
};
use crate::domain::{Order, OrderId, OrderStatus, Saga, Settlement};

use super::group::{GroupQueue, Jobs, NotQueued, next_batch};
use super::orders::{ORDER_COLUMNS, OrderRow};
use super::warm::Warm;
use super::{PgStore, Wake, classify, column, corrupt};

#[derive(sqlx::FromRow)]
struct StoredOrder {
    #[sqlx(flatten)]
    order: OrderRow,
    correlation_id: String,
    saga: Option<serde_json::Value>,
    version: i64,
}

/// Reads the orders `$1` with their sagas and versions (`xmin`, the
/// transaction that wrote the row last), without locking them. (The values
/// of this statement and of `WRITE_SQL` come through sub-selects: one plan
/// per connection, see the module `postgres`.)
static READ_SQL: LazyLock<String> =
    LazyLock::new(|| read_orders("id = ANY((SELECT $1::uuid[])::uuid[])"));

/// `READ_SQL` for one order, by its id rather than a one-element array: a
/// tenth less PostgreSQL CPU (docs/performance.md, the twenty-second
/// session). Where the orchestrator runs apart from the API, every saga
/// starts with this read.
static READ_ONE_SQL: LazyLock<String> = LazyLock::new(|| read_orders("id = $1"));

/// The saga's read of the orders `filter` picks.
fn read_orders(filter: &str) -> String {
    format!(
        "SELECT {ORDER_COLUMNS}, correlation_id, saga, xmin::text::bigint AS version
           FROM orders WHERE {filter}"
    )
}

/// Writes a batch of decisions in one statement: each order's saga (and its
/// settlement, only from PROCESSING) in place, only if the order is still
/// at the version its decision saw, and the log entries of the orders it
/// wrote, in the batch's order. Returns each order written with its new
/// version. The orders come sorted by id, so two batches that share orders
/// lock them in the same order.
const WRITE_SQL: &str = "WITH updated AS (
         UPDATE orders o
            SET saga = w.saga, next_deadline = w.next_deadline,
                status = coalesce(w.status, o.status),
                cancel_reason = CASE WHEN w.status IS NULL THEN o.cancel_reason ELSE w.reason END,
                updated_at = CASE WHEN w.status IS NULL THEN o.updated_at ELSE $7 END
           FROM UNNEST((SELECT $1::uuid[]), (SELECT $2::bigint[]), (SELECT $3::jsonb[]),
                       (SELECT $4::timestamptz[]), (SELECT $5::text[]), (SELECT $6::text[]))
                AS w (id, version, saga, next_deadline, status, reason)
          WHERE o.id = w.id AND o.xmin = w.version::text::xid
            AND (w.status IS NULL OR o.status = 'PROCESSING')
         RETURNING o.id, o.xmin::text::bigint AS version
     ), logged AS (
         INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload,
                               message_id, topic, message_type, correlation_id, message)
         SELECT e.order_id, e.occurred_at, e.event_id, e.event_type, e.payload,
                e.message_id, e.topic, e.message_type, e.correlation_id, e.message
           FROM UNNEST((SELECT $8::uuid[]), (SELECT $9::timestamptz[]), (SELECT $10::uuid[]),
                       (SELECT $11::text[]), (SELECT $12::jsonb[]), (SELECT $13::uuid[]),
                       (SELECT $14::text[]), (SELECT $15::text[]), (SELECT $16::text[]),
                       (SELECT $17::jsonb[]))
                WITH ORDINALITY
                AS e (order_id, occurred_at, event_id, event_type, payload,
                      message_id, topic, message_type, correlation_id, message, n)
          WHERE e.order_id IN (SELECT id FROM updated)
          ORDER BY e.n
     )
     SELECT id, version FROM updated";

/// `WRITE_SQL` for one order, which is what most writes carry below a few
/// hundred orders a second: the order's values bound as they are. Given them
/// as one-element arrays, PostgreSQL decoded six arrays, unnested them,
/// joined them with `orders` and hashed the written ids for the log's
/// insert, a fifth of its CPU for each such write (docs/performance.md,
/// the twenty-second session). The log entries stay arrays (their number
/// varies), all of them the order's.
const WRITE_ONE_SQL: &str = "WITH updated AS (
         UPDATE orders o
            SET saga = $3, next_deadline = $4,
                status = coalesce($5, o.status),
                cancel_reason = CASE WHEN $5 IS NULL THEN o.cancel_reason ELSE $6 END,
                updated_at = CASE WHEN $5 IS NULL THEN o.updated_at ELSE $7 END
          WHERE o.id = $1 AND o.xmin = $2::text::xid
            AND ($5 IS NULL OR o.status = 'PROCESSING')
         RETURNING o.id, o.xmin::text::bigint AS version
     ), logged AS (
         INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload,
                               message_id, topic, message_type, correlation_id, message)
         SELECT u.id, e.occurred_at, e.event_id, e.event_type, e.payload,
                e.message_id, e.topic, e.message_type, e.correlation_id, e.message
           FROM updated u,
                UNNEST((SELECT $8::timestamptz[]), (SELECT $9::uuid[]), (SELECT $10::text[]),
                       (SELECT $11::jsonb[]), (SELECT $12::uuid[]), (SELECT $13::text[]),
                       (SELECT $14::text[]), (SELECT $15::text[]), (SELECT $16::jsonb[]))
                WITH ORDINALITY
                AS e (occurred_at, event_id, event_type, payload,
                      message_id, topic, message_type, correlation_id, message, n)
          ORDER BY e.n
     )
     SELECT id, version FROM updated";

/// How many times a batch's decisions about an order that keeps changing
/// are taken again before they fail (as overloaded: the consumer retries).
const CONFLICT_ROUNDS: usize = 5;

/// Most orders whose state the writers remember. Settled orders are
/// forgotten at once; this bounds the others (orders whose saga moved to
/// another process, say).
const KNOWN_MAX: usize = 16_384;

/// What the writers know of the orders they wrote or read last: the state
/// and its version. Only a hint: a write made on a stale one does not
/// happen, and the order is read again.
#[derive(Default)]
struct Known(Mutex<HashMap<Uuid, (i64, SagaContext)>>);

impl Known {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (i64, SagaContext)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `ctx` at `version`, or forgets a settled order.
    fn remember(&self, version: i64, ctx: SagaContext) {
        let mut known = self.lock();
        if ctx.order.status != OrderStatus::Processing {
            known.remove(&ctx.order.id.0);
            return;
        }
        if known.len() >= KNOWN_MAX
            && !known.contains_key(&ctx.order.id.0)
            && let Some(any) = known.keys().next().copied()
        {
            known.remove(&any);
        }
        known.insert(ctx.order.id.0, (version, ctx));
    }

    fn forget(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut known = self.lock();
        for id in ids {
            known.remove(&id);
        }
    }
}

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
    known: Arc<Known>,
}

impl SagaQueue {
    pub(super) fn new(writers: usize, batch_max: usize) -> Self {
        Self {
            // Decisions come from consumers (a few dozen messages in flight
            // each) and the sweeper: this bound is never reached in normal work.
            queue: GroupQueue::new(writers.max(1) * batch_max.max(1) * 16),
            writers: writers.max(1),
            batch_max: batch_max.max(1),
            known: Arc::default(),
        }
    }

    /// This store has inserted `order` (and its `order-created` entry), at
    /// `version`: its writers will start its saga without reading it. Only
    /// once they run: a process that takes no saga decisions (the API alone)
    /// remembers nothing.
    pub(super) fn inserted(&self, version: i64, order: &Order, correlation_id: &str) {
        if self.queue.started() {
            self.known.remember(
                version,
                SagaContext {
                    order: order.clone(),
                    correlation_id: correlation_id.to_owned(),
                    saga: None,
                },
            );
        }
    }

    fn submit(&self, warm: &Arc<Warm>, wake: &Wake, job: Job) {
        let start = |jobs: Jobs<Job>| {
            for _ in 0..self.writers {
                let writer = Writer {
                    warm: warm.clone(),
                    wake: wake.clone(),
                    batch_max: self.batch_max,
                    known: self.known.clone(),
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
    warm: Arc<Warm>,
    wake: Wake,
    batch_max: usize,
    known: Arc<Known>,
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

    /// Decides `jobs` and writes what they decided in one statement (each
    /// order once, with every entry), taking again, on a fresh read, the
    /// decisions about an order that changed meanwhile. Each job's outcomes
    /// come back in order; an error of the statement fails them all.
    async fn transact(
        &self,
        jobs: &[&Job],
    ) -> Result<Vec<Vec<Result<SagaOutcome, StoreError>>>, StoreError> {
        let mut outcomes: Vec<Option<Vec<Result<SagaOutcome, StoreError>>>> =
            jobs.iter().map(|_| None).collect();
        // The jobs still to decide, and whether what the writers know of
        // their orders may be used (not after a conflict).
        let mut pending: Vec<usize> = (0..jobs.len()).collect();
        let mut trust_known = true;
        for _ in 0..CONFLICT_ROUNDS {
            let mut ids: Vec<Uuid> = pending.iter().map(|&i| jobs[i].order_id.0).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut current = match self.current(&ids, trust_known).await {
                Ok(current) => current,
                Err(e) => {
                    self.known.forget(ids);
                    fail_pending(&mut outcomes, &mut pending, jobs, e)?;
                    break;
                }
            };
            let mut decided = HashMap::with_capacity(pending.len());
            for &i in &pending {
                let job = jobs[i];
                let outcome = match current.get_mut(&job.order_id.0) {
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
                decided.insert(i, outcome);
            }
            // Sorted by id (`current` is not): see WRITE_SQL.
            let mut orders: Vec<Current> = current.into_values().filter_map(Result::ok).collect();
            orders.sort_unstable_by_key(|c| c.ctx.order.id.0);
            let written = match write(&self.warm, &orders).await {
                Ok(written) => written,
                Err(e) => {
                    self.known.forget(ids);
                    fail_pending(&mut outcomes, &mut pending, jobs, e)?;
                    break;
                }
            };
            if !written.is_empty() {
                // The relays look for what was logged: events, and messages if any.
                self.wake.committed(
                    orders
                        .iter()
                        .filter(|c| written.contains_key(&c.ctx.order.id.0))
                        .filter_map(|c| c.write.as_ref())
                        .flat_map(|w| w.entries.iter())
                        .filter_map(|e| e.message.as_ref().map(|m| (m, e.event.at))),
                );
            }
            let mut changed = Vec::new();
            for c in orders {
                match (&c.write, written.get(&c.ctx.order.id.0)) {
                    // Nothing to write, decided on what the writers remembered:
                    // no write checked it, and it may be stale (the order moved
                    // on in another process, a reply would be dropped as
                    // early), so it is decided again on a fresh read.
                    (None, _) if c.known => changed.push(c.ctx.order.id.0),
                    (None, _) => self.known.remember(c.version, c.ctx),
                    (Some(_), Some(&version)) => self.known.remember(version, c.ctx),
                    (Some(_), None) => changed.push(c.ctx.order.id.0),
                }
            }
            self.known.forget(changed.iter().copied());
            let (again, done): (Vec<usize>, Vec<usize>) = pending
                .into_iter()
                .partition(|&i| changed.contains(&jobs[i].order_id.0));
            for i in done {
                outcomes[i] = decided.remove(&i);
            }
            pending = again;
            if pending.is_empty() {
                break;
            }
            trust_known = false;
        }
        for i in pending {
            let order_id = jobs[i].order_id;
            outcomes[i] = Some(failed(jobs[i], || {
                StoreError::Overloaded(format!(
                    "order {order_id} changed {CONFLICT_ROUNDS} times while its saga decision was being written"
                ))
            }));
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every job decided or failed"))
            .collect())
    }

    /// The orders `ids` as they are now: from what the writers know (when
    /// `trust_known`), the others read. An order missing from the map does
    /// not exist.
    async fn current(
        &self,
        ids: &[Uuid],
        trust_known: bool,
    ) -> Result<HashMap<Uuid, Result<Current, String>>, StoreError> {
        let mut current = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let known = self.known.lock();
            for id in ids {
                match known.get(id).filter(|_| trust_known) {
                    Some((version, ctx)) => {
                        let mut c = Current::new(*version, ctx.clone());
                        c.known = true;
                        current.insert(*id, Ok(c));
                    }
                    None => missing.push(*id),
                }
            }
        }
        if !missing.is_empty() {
            let query = match &missing[..] {
                [id] => sqlx::query_as(sqlx::AssertSqlSafe(READ_ONE_SQL.as_str())).bind(id),
                _ => sqlx::query_as(sqlx::AssertSqlSafe(READ_SQL.as_str())).bind(&missing),
            };
            let stored: Vec<StoredOrder> = self
                .warm
                .run(async |c| query.fetch_all(c).await)
                .await
                .map_err(classify)?;
            current.extend(
                stored
                    .into_iter()
                    .map(|s| (s.order.id, Current::read(s).map_err(|e| e.to_string()))),
            );
        }
        Ok(current)
    }
}

/// A read or write of `transact` failed with `e`. Before anything was
/// written that is the whole batch's failure (`Err`, so the writer retries its
/// jobs one by one); after an earlier round wrote some jobs, only the jobs
/// still pending fail, each with `e`'s kind.
fn fail_pending(
    outcomes: &mut [Option<Vec<Result<SagaOutcome, StoreError>>>],
    pending: &mut Vec<usize>,
    jobs: &[&Job],
    e: StoreError,
) -> Result<(), StoreError> {
    if outcomes.iter().all(Option::is_none) {
        return Err(e);
    }
    for i in pending.drain(..) {
        outcomes[i] = Some(spread(jobs[i], e.again()));
    }
    Ok(())
}

/// An order as its decisions see it (at `version`), and what they have
/// decided so far.
struct Current {
    version: i64,
    ctx: SagaContext,
    write: Option<SagaWrite>,
    /// Taken from what the writers remember, not read.
    known: bool,
}

impl Current {
    fn new(version: i64, ctx: SagaContext) -> Self {
        Self {
            version,
            ctx,
            write: None,
            known: false,
        }
    }

    fn read(stored: StoredOrder) -> Result<Self, StoreError> {
        let saga = stored
            .saga
            .map(serde_json::from_value::<Saga>)
            .transpose()
            .map_err(|e| corrupt("saga state", e))?;
        let ctx = SagaContext {
            order: Order::try_from(stored.order)?,
            correlation_id: stored.correlation_id,
            saga,
        };
        Ok(Self::new(stored.version, ctx))
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
        if w.settle.is_some() && self.ctx.order.status != OrderStatus::Processing {
            return Err(StoreError::Other(anyhow::anyhow!(
                "order {order_id} is {} already; its saga cannot settle it again",
                self.ctx.order.status.as_str()
            )));
        }
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

/// Writes what the decisions about `orders` decided, in one statement (its
/// own transaction): `WRITE_ONE_SQL` for one order, `WRITE_SQL` for more.
/// Returns the orders written, each with its new version. An order missing
/// from it changed since its decisions read it.
async fn write(warm: &Warm, orders: &[Current]) -> Result<HashMap<Uuid, i64>, StoreError> {
    let writes: Vec<(Uuid, i64, &SagaWrite)> = orders
        .iter()
        .filter_map(|c| c.write.as_ref().map(|w| (c.ctx.order.id.0, c.version, w)))
        .collect();
    if writes.is_empty() {
        return Ok(HashMap::new());
    }
    let states = writes
        .iter()
        .map(|(_, _, w)| serde_json::to_value(&w.saga))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Other(e.into()))?;
    let settle = |w: &SagaWrite| w.settle.map(Settlement::status).map(|s| s.as_str());
    let reason = |w: &SagaWrite| w.settle.and_then(|s| s.cancel_reason()).map(|r| r.as_str());
    let entries: Vec<(Uuid, &LogEntry)> = writes
        .iter()
        .flat_map(|&(id, _, w)| w.entries.iter().map(move |e| (id, e)))
        .collect();
    let now = Utc::now();
    let query = match (&writes[..], &states[..]) {
        ([(id, version, w)], [state]) => sqlx::query_as(WRITE_ONE_SQL)
            .bind(id)
            .bind(version)
            .bind(state)
            .bind(w.saga.next_deadline())
            .bind(settle(w))
            .bind(reason(w))
            .bind(now),
        _ => sqlx::query_as(WRITE_SQL)
            .bind(column(&writes, |(id, _, _)| *id))
            .bind(column(&writes, |(_, version, _)| *version))
            .bind(&states)
            .bind(column(&writes, |(_, _, w)| w.saga.next_deadline()))
            .bind(column(&writes, |(_, _, w)| settle(w)))
            .bind(column(&writes, |(_, _, w)| reason(w)))
            .bind(now)
            .bind(column(&entries, |(id, _)| *id)),
    };
    let query: WriteQuery<'_> = bind_entries(query, &entries);
    let written = warm
        .run(async |c| query.fetch_all(c).await)
        .await
        .map_err(classify)?;
    Ok(written.into_iter().collect())
}

type WriteQuery<'q> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, (Uuid, i64), sqlx::postgres::PgArguments>;

/// Binds the log entries' columns, the last nine values of both writes
/// (each entry with its order's id, which only `WRITE_SQL` binds, before).
fn bind_entries<'q>(query: WriteQuery<'q>, entries: &'q [(Uuid, &'q LogEntry)]) -> WriteQuery<'q> {
    query
        .bind(column(entries, |(_, e)| e.event.at))
        .bind(column(entries, |(_, e)| e.event.event_id))
        .bind(column(entries, |(_, e)| e.event.kind.as_str()))
        .bind(column(entries, |(_, e)| &e.event.payload))
        .bind(column(entries, |(_, e)| message(e).map(|m| m.message_id)))
        .bind(column(entries, |(_, e)| message(e).map(|m| m.topic.name())))
        .bind(column(entries, |(_, e)| {
            message(e).map(|m| m.message_type.as_str())
        }))
        .bind(column(entries, |(_, e)| {
            message(e).map(|m| m.correlation_id.as_str())
        }))
        .bind(column(entries, |(_, e)| message(e).map(|m| &m.payload)))
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
        self.sagas.submit(&self.warm, &self.wake, job);
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
