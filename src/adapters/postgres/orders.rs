//! `OrderStore` on PostgreSQL.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::application::messages::OutboundMessage;
use crate::application::ports::{
    IdempotencyClaim, LogEntry, NewEvent, OrderPage, OrderStore, PlaceOutcome, StoreError,
};
use crate::domain::{Installment, Money, NewOrder, Order, OrderId, UserId};

use super::group::{GroupQueue, Jobs, NotQueued, next_batch};
use super::saga::SagaQueue;
use super::warm::Warm;
use super::{PgStore, Wake, classify, column, corrupt};

pub(super) const ORDER_COLUMNS: &str =
    "id, user_id, value, installment, method, status, cancel_reason, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(super) struct OrderRow {
    pub(super) id: Uuid,
    user_id: String,
    value: Decimal,
    installment: i32,
    method: String,
    status: String,
    cancel_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;
    fn try_from(r: OrderRow) -> Result<Self, StoreError> {
        Ok(Order {
            id: OrderId(r.id),
            value: Money::from_decimal(r.value).map_err(|e| corrupt("order value", e))?,
            user_id: UserId::parse(&r.user_id).map_err(|e| corrupt("user_id", e))?,
            installment: u32::try_from(r.installment)
                .ok()
                .and_then(|n| Installment::new(n).ok())
                .ok_or_else(|| corrupt("installment", r.installment))?,
            method: r.method.parse().map_err(|e| corrupt("method", e))?,
            status: r.status.parse().map_err(|e| corrupt("status", e))?,
            cancel_reason: r
                .cancel_reason
                .map(|c| c.parse())
                .transpose()
                .map_err(|e| corrupt("cancel_reason", e))?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// The order and its first saga-log entry (the `order_created` event with
/// the `order-created` message), in one statement: one round trip and an
/// implicit transaction, two rows. Returns the order's version (`xmin`, as
/// the saga store reads it).
fn insert_order<'q>(
    order: &'q Order,
    correlation_id: &'q str,
    event: &'q NewEvent,
    message: &'q OutboundMessage,
) -> sqlx::query::QueryScalar<'q, Postgres, i64, sqlx::postgres::PgArguments> {
    sqlx::query_scalar(
        "WITH new_order AS (
             INSERT INTO orders (id, user_id, value, installment, method, status, cancel_reason, correlation_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, $9)
             RETURNING xmin::text::bigint AS version
         ), logged AS (
             INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload,
                                   message_id, topic, message_type, correlation_id, message)
             VALUES ($1, $10, $11, $12, $13, $14, $15, $16, $7, $17)
         )
         SELECT version FROM new_order",
    )
    .bind(order.id.0)
    .bind(order.user_id.as_str())
    .bind(order.value.amount())
    .bind(order.installment.get() as i32)
    .bind(order.method.as_str())
    .bind(order.status.as_str())
    .bind(correlation_id)
    .bind(order.created_at)
    .bind(order.updated_at)
    .bind(event.at)
    .bind(event.event_id)
    .bind(event.kind.as_str())
    .bind(&event.payload)
    .bind(message.message_id)
    .bind(message.topic.name())
    .bind(message.message_type.as_str())
    .bind(&message.payload)
}

/// A new order's entry must carry its `order-created` message.
fn order_created(entry: &LogEntry) -> Result<&OutboundMessage, StoreError> {
    entry.message.as_ref().ok_or_else(|| {
        StoreError::Other(anyhow::anyhow!(
            "a new order's log entry must carry its order-created message"
        ))
    })
}

/// Inserts a batch of new orders, each with its first log entry, in one
/// statement (its own transaction): see `InsertQueue`. Returns the orders'
/// version (one transaction: one version).
const INSERT_BATCH_SQL: &str = "WITH new_orders AS (
         INSERT INTO orders (id, user_id, value, installment, method, status, cancel_reason, correlation_id, created_at, updated_at)
         SELECT id, user_id, value, installment, method, status, NULL, correlation_id, created_at, updated_at
         FROM UNNEST($1::uuid[], $2::text[], $3::numeric[], $4::int[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[])
              AS o (id, user_id, value, installment, method, status, correlation_id, created_at, updated_at)
         RETURNING xmin::text::bigint AS version
     ), logged AS (
         INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload,
                               message_id, topic, message_type, correlation_id, message)
         SELECT * FROM UNNEST($1::uuid[], $10::timestamptz[], $11::uuid[], $12::text[], $13::jsonb[],
                              $14::uuid[], $15::text[], $16::text[], $7::text[], $17::jsonb[])
     )
     SELECT max(version) FROM new_orders";

/// Most new orders in one statement.
const ORDER_BATCH_MAX: usize = 64;

/// A new order waiting to be inserted, and where its outcome goes.
pub(super) struct Insert {
    order: Order,
    correlation_id: String,
    event: NewEvent,
    message: OutboundMessage,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Group commit for new orders without an idempotency key. While fewer than
/// `writers` inserts are running, `place` inserts its order itself (no hand-over
/// to another task, so a lightly loaded API waits for nothing); beyond that it
/// queues the order, and the writer tasks each take every order waiting (up to
/// `ORDER_BATCH_MAX`) and insert them in one statement: under load one commit
/// stands for several orders.
pub(super) struct InsertQueue {
    /// Insert statements running, inline or in a writer.
    running: Arc<AtomicUsize>,
    queue: GroupQueue<Insert>,
    writers: usize,
}

impl InsertQueue {
    pub(super) fn new(writers: usize, queue_max: usize) -> Self {
        Self {
            running: Arc::default(),
            queue: GroupQueue::new(queue_max),
            writers: writers.max(1),
        }
    }

    /// Takes a slot to insert inline, if fewer than `writers` inserts are running.
    fn inline_slot(&self) -> Option<RunningGuard> {
        let taken = self
            .running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.writers).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| RunningGuard(self.running.clone()))
    }

    /// (The writers hold no `PgStore`: they stop when the last one goes.)
    fn submit(&self, store: &PgStore, job: Insert) {
        let start = |jobs: Jobs<Insert>| {
            for _ in 0..self.writers {
                let writer = InsertWriter {
                    warm: store.warm.clone(),
                    wake: store.wake.clone(),
                    sagas: store.sagas.clone(),
                    running: self.running.clone(),
                };
                tokio::spawn(writer.run(jobs.clone()));
            }
        };
        match self.queue.submit(job, start) {
            Ok(()) => {}
            Err(NotQueued::Full(job)) => {
                let _ = job.done.send(Err(StoreError::Overloaded(
                    "too many new orders waiting to be stored".into(),
                )));
            }
            Err(NotQueued::Stopped(job)) => {
                let _ = job.done.send(Err(StoreError::Other(anyhow::anyhow!(
                    "the order writers have stopped"
                ))));
            }
        }
    }
}

/// Counts a running insert until dropped.
struct RunningGuard(Arc<AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct InsertWriter {
    warm: Arc<Warm>,
    wake: Wake,
    sagas: Arc<SagaQueue>,
    running: Arc<AtomicUsize>,
}

impl InsertWriter {
    async fn run(self, jobs: Jobs<Insert>) {
        let Self {
            warm,
            wake,
            sagas,
            running,
        } = &self;
        while let Some(batch) = next_batch(&jobs, ORDER_BATCH_MAX).await {
            running.fetch_add(1, Ordering::SeqCst);
            let _running = RunningGuard(running.clone());
            metrics::histogram!(crate::metrics::ORDER_BATCH_SIZE).record(batch.len() as f64);
            let outcome = if batch.len() == 1 {
                let j = &batch[0];
                insert_one(warm, j).await
            } else {
                insert_batch(warm, &batch).await.map_err(classify)
            };
            match outcome {
                Ok(version) => {
                    wake.committed(batch.iter().map(|j| (&j.message, j.event.at)));
                    for j in batch {
                        sagas.inserted(version, &j.order, &j.correlation_id);
                        let _ = j.done.send(Ok(()));
                    }
                }
                Err(e) if batch.len() == 1 => {
                    let _ = batch.into_iter().next().map(|j| j.done.send(Err(e)));
                }
                Err(StoreError::Unavailable(detail)) => {
                    for j in batch {
                        let _ = j.done.send(Err(StoreError::Unavailable(detail.clone())));
                    }
                }
                Err(e) => {
                    // One order's failure must not fail the others: one by one.
                    tracing::debug!(error = %e, orders = batch.len(), "order batch failed; inserting its orders one by one");
                    for j in batch {
                        let one = insert_one(warm, &j).await;
                        if let Ok(version) = one {
                            wake.committed([(&j.message, j.event.at)]);
                            sagas.inserted(version, &j.order, &j.correlation_id);
                        }
                        let _ = j.done.send(one.map(|_| ()));
                    }
                }
            }
        }
    }
}

/// Inserts one order; returns its version.
async fn insert_one(warm: &Warm, j: &Insert) -> Result<i64, StoreError> {
    let query = insert_order(&j.order, &j.correlation_id, &j.event, &j.message);
    warm.run(async |c| query.fetch_one(c).await)
        .await
        .map_err(classify)
}

/// Inserts a batch of orders; returns their version.
async fn insert_batch(warm: &Warm, batch: &[Insert]) -> Result<i64, sqlx::Error> {
    let query = sqlx::query_scalar(INSERT_BATCH_SQL)
        .bind(column(batch, |j| j.order.id.0))
        .bind(column(batch, |j| j.order.user_id.as_str()))
        .bind(column(batch, |j| j.order.value.amount()))
        .bind(column(batch, |j| j.order.installment.get() as i32))
        .bind(column(batch, |j| j.order.method.as_str()))
        .bind(column(batch, |j| j.order.status.as_str()))
        .bind(column(batch, |j| j.correlation_id.as_str()))
        .bind(column(batch, |j| j.order.created_at))
        .bind(column(batch, |j| j.order.updated_at))
        .bind(column(batch, |j| j.event.at))
        .bind(column(batch, |j| j.event.event_id))
        .bind(column(batch, |j| j.event.kind.as_str()))
        .bind(column(batch, |j| &j.event.payload))
        .bind(column(batch, |j| j.message.message_id))
        .bind(column(batch, |j| j.message.topic.name()))
        .bind(column(batch, |j| j.message.message_type.as_str()))
        .bind(column(batch, |j| &j.message.payload));
    warm.run(async |c| query.fetch_one(c).await).await
}

impl PgStore {
    /// Queues a new order for the order writers and waits until it is inserted.
    async fn queue_insert(
        &self,
        order: &Order,
        correlation_id: &str,
        entry: &LogEntry,
    ) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        let job = Insert {
            order: order.clone(),
            correlation_id: correlation_id.to_owned(),
            event: entry.event.clone(),
            message: order_created(entry)?.clone(),
            done,
        };
        self.inserts.submit(self, job);
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Other(anyhow::anyhow!(
                "the order writer stopped before inserting order {}",
                order.id
            )))
        })
    }

    /// Claims the idempotency key and inserts the order in one transaction;
    /// returns the order's version, or what the key's earlier use answers
    /// (its order again, or a conflict).
    async fn insert_with_key(
        &self,
        order: &Order,
        correlation_id: &str,
        claim: &IdempotencyClaim,
        event: &NewEvent,
        message: &OutboundMessage,
    ) -> Result<ControlFlow<PlaceOutcome, i64>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        if let Some((earlier, earlier_order)) = Self::claim_key(&mut tx, claim, order.id).await? {
            tx.rollback().await.map_err(classify)?;
            if earlier != claim.request {
                return Ok(ControlFlow::Break(PlaceOutcome::KeyConflict));
            }
            let existing = self
                .get(earlier_order)
                .await?
                .ok_or_else(|| corrupt("idempotency key", "order missing"))?;
            return Ok(ControlFlow::Break(PlaceOutcome::Replayed(existing)));
        }
        let version = insert_order(order, correlation_id, event, message)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(ControlFlow::Continue(version))
    }

    /// Claims the idempotency key for `order_id` (taking over an expired claim).
    /// Returns the earlier use of the key when it is taken.
    async fn claim_key(
        tx: &mut Transaction<'_, Postgres>,
        claim: &IdempotencyClaim,
        order_id: OrderId,
    ) -> Result<Option<(NewOrder, OrderId)>, StoreError> {
        let request =
            serde_json::to_value(&claim.request).map_err(|e| StoreError::Other(e.into()))?;
        let claimed: Option<(Uuid,)> = sqlx::query_as(
            "INSERT INTO idempotency_keys (key, request, order_id, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE
                SET request = EXCLUDED.request, order_id = EXCLUDED.order_id,
                    created_at = now(), expires_at = EXCLUDED.expires_at
                WHERE idempotency_keys.expires_at <= now()
             RETURNING order_id",
        )
        .bind(&claim.key)
        .bind(&request)
        .bind(order_id.0)
        .bind(claim.expires_at)
        .fetch_optional(&mut **tx)
        .await
        .map_err(classify)?;
        if claimed.is_some() {
            return Ok(None);
        }
        let (earlier, earlier_order): (serde_json::Value, Uuid) =
            sqlx::query_as("SELECT request, order_id FROM idempotency_keys WHERE key = $1")
                .bind(&claim.key)
                .fetch_one(&mut **tx)
                .await
                .map_err(classify)?;
        let earlier: NewOrder =
            serde_json::from_value(earlier).map_err(|e| corrupt("idempotency request", e))?;
        Ok(Some((earlier, OrderId(earlier_order))))
    }
}

#[async_trait]
impl OrderStore for PgStore {
    async fn place(
        &self,
        order: &Order,
        correlation_id: &str,
        idempotency: Option<&IdempotencyClaim>,
        entry: &LogEntry,
    ) -> Result<PlaceOutcome, StoreError> {
        let message = order_created(entry)?;
        // The version, and the inline insert's slot (held until the saga
        // store has the order, as a writer holds its own).
        let (version, _slot) = match idempotency {
            // Inserted here while few inserts run (one statement, its own
            // transaction); otherwise queued for a writer, which inserts it
            // with the other orders waiting (one statement, one commit).
            None => {
                let Some(slot) = self.inserts.inline_slot() else {
                    self.queue_insert(order, correlation_id, entry).await?;
                    // The writer has woken the relays.
                    return Ok(PlaceOutcome::Created(order.clone()));
                };
                let insert = insert_order(order, correlation_id, &entry.event, message);
                let version = self
                    .warm
                    .run(async |c| insert.fetch_one(c).await)
                    .await
                    .map_err(classify)?;
                (version, Some(slot))
            }
            // Boxed: its transaction's state would otherwise make every
            // call's future larger, and each call copies that future once.
            Some(claim) => {
                let keyed =
                    self.insert_with_key(order, correlation_id, claim, &entry.event, message);
                match Box::pin(keyed).await? {
                    ControlFlow::Continue(version) => (version, None),
                    ControlFlow::Break(earlier) => return Ok(earlier),
                }
            }
        };
        self.sagas.inserted(version, order, correlation_id);
        self.wake.committed([(message, entry.event.at)]);
        Ok(PlaceOutcome::Created(order.clone()))
    }

    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
        let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.map(Order::try_from).transpose()
    }

    async fn list_for_user(
        &self,
        user: &UserId,
        offset: u64,
        limit: u32,
    ) -> Result<OrderPage, StoreError> {
        let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE user_id = $1")
            .bind(user.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let orders = if offset >= total {
            Vec::new()
        } else {
            let sql = format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1
                 ORDER BY created_at DESC, seq DESC OFFSET $2 LIMIT $3"
            );
            let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(user.as_str())
                .bind(offset)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
            rows.into_iter()
                .map(Order::try_from)
                .collect::<Result<_, _>>()?
        };
        Ok(OrderPage {
            total: total as u64,
            orders,
        })
    }

    async fn recent(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders ORDER BY seq DESC LIMIT $1");
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.into_iter().map(Order::try_from).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        PgStore::ping(self).await
    }

    async fn processing_count(&self) -> Result<u64, StoreError> {
        // Counted on the partial index of PROCESSING orders.
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PROCESSING'")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(n.max(0) as u64)
    }
}
