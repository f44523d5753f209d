//! `SagaStore` on PostgreSQL: each decision in one transaction, with the
//! order row locked so decisions about one order never interleave.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::application::ports::{SagaContext, SagaDecision, SagaOutcome, SagaStore, StoreError};
use crate::domain::{Order, OrderId, Saga};

use super::orders::{ORDER_COLUMNS, OrderRow};
use super::{PgStore, classify, corrupt};

#[derive(sqlx::FromRow)]
struct LockedOrder {
    #[sqlx(flatten)]
    order: OrderRow,
    correlation_id: String,
    /// 1 if the message id was recorded just now, 0 if it was already there (or no dedupe).
    recorded: i64,
}

/// Records the message id (`$2`, `$3`, unless null), then locks and reads
/// the order `$1`: one round trip. The saga is read by a statement of its
/// own, after the lock: a row joined here but not locked could come back as
/// it was before a concurrent decision about the same order committed
/// (PostgreSQL re-reads only the locked row after waiting for the lock).
static LOCK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH recorded AS (
             INSERT INTO processed_messages (consumer, message_id)
             SELECT $2, $3 WHERE $2::text IS NOT NULL
             ON CONFLICT DO NOTHING RETURNING 1
         )
         SELECT {ORDER_COLUMNS}, correlation_id, (SELECT count(*) FROM recorded) AS recorded
         FROM orders WHERE id = $1 FOR UPDATE"
    )
});

/// Writes a decision: the saga, the order's settlement (if any, and only
/// from PROCESSING), the outbox messages and the saga events; returns how
/// many orders were settled. One round trip.
const WRITE_SQL: &str = "WITH saga AS (
         INSERT INTO sagas (order_id, state, next_deadline) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO UPDATE SET state = EXCLUDED.state,
             next_deadline = EXCLUDED.next_deadline, updated_at = now()
     ), settled AS (
         UPDATE orders SET status = $4, cancel_reason = $5, updated_at = $6
         WHERE id = $1 AND status = 'PROCESSING' AND $4::text IS NOT NULL
         RETURNING 1
     ), messages AS (
         INSERT INTO outbox (message_id, topic, message_key, message_type, correlation_id, payload, created_at)
         SELECT * FROM UNNEST($7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::timestamptz[])
     ), events AS (
         INSERT INTO saga_events (event_id, order_id, event_type, payload, occurred_at)
         SELECT * FROM UNNEST($14::uuid[], $15::uuid[], $16::text[], $17::jsonb[], $18::timestamptz[])
     )
     SELECT count(*) FROM settled";

#[async_trait]
impl SagaStore for PgStore {
    async fn transact(
        &self,
        order_id: OrderId,
        dedupe: Option<(&str, Uuid)>,
        decide: SagaDecision,
    ) -> Result<SagaOutcome, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let Some(locked): Option<LockedOrder> =
            sqlx::query_as(sqlx::AssertSqlSafe(LOCK_SQL.as_str()))
                .bind(order_id.0)
                .bind(dedupe.map(|(consumer, _)| consumer))
                .bind(dedupe.map(|(_, id)| id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?
        else {
            tx.rollback().await.map_err(classify)?;
            return Ok(SagaOutcome::UnknownOrder);
        };
        if dedupe.is_some() && locked.recorded == 0 {
            tx.rollback().await.map_err(classify)?;
            return Ok(SagaOutcome::Duplicate);
        }
        let state: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT state FROM sagas WHERE order_id = $1")
                .bind(order_id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
        let saga = state
            .map(serde_json::from_value::<Saga>)
            .transpose()
            .map_err(|e| corrupt("saga state", e))?;
        let ctx = SagaContext {
            order: Order::try_from(locked.order)?,
            correlation_id: locked.correlation_id,
            saga,
        };
        let Some(write) = decide(&ctx) else {
            // Still commit: the message id is now recorded as processed.
            tx.commit().await.map_err(classify)?;
            return Ok(SagaOutcome::NothingToDo);
        };

        let state = serde_json::to_value(&write.saga).map_err(|e| StoreError::Other(e.into()))?;
        let (messages, events) = (&write.outbox, &write.events);
        let settled: i64 = sqlx::query_scalar(WRITE_SQL)
            .bind(order_id.0)
            .bind(state)
            .bind(write.saga.next_deadline())
            .bind(write.settle.map(|s| s.status().as_str()))
            .bind(
                write
                    .settle
                    .and_then(|s| s.cancel_reason())
                    .map(|r| r.as_str()),
            )
            .bind(Utc::now())
            .bind(messages.iter().map(|m| m.message_id).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.topic.name()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.key.as_str()).collect::<Vec<_>>())
            .bind(
                messages
                    .iter()
                    .map(|m| m.message_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.correlation_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.payload.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(messages.iter().map(|m| m.time).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.order_id.0).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        // Guarded twice: by the WHERE clause, and by the transition trigger.
        if write.settle.is_some() && settled != 1 {
            tx.rollback().await.map_err(classify)?;
            return Err(StoreError::Other(anyhow::anyhow!(
                "order {order_id} was no longer PROCESSING when its saga settled it"
            )));
        }
        tx.commit().await.map_err(classify)?;
        if !messages.is_empty() || !events.is_empty() {
            self.outbox_written();
        }
        Ok(SagaOutcome::Applied)
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
