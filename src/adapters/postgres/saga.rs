//! `SagaStore` on PostgreSQL: each decision in one transaction, with the
//! order row locked so decisions about one order never interleave.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::application::ports::{SagaContext, SagaDecision, SagaOutcome, SagaStore, StoreError};
use crate::domain::{Order, OrderId, Saga};

use super::orders::{ORDER_COLUMNS, OrderRow, insert_events, insert_outbox};
use super::{PgStore, classify, corrupt};

#[derive(sqlx::FromRow)]
struct LockedOrder {
    #[sqlx(flatten)]
    order: OrderRow,
    correlation_id: String,
}

#[async_trait]
impl SagaStore for PgStore {
    async fn transact(
        &self,
        order_id: OrderId,
        dedupe: Option<(&str, Uuid)>,
        decide: SagaDecision,
    ) -> Result<SagaOutcome, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        if let Some((consumer, message_id)) = dedupe {
            let fresh = sqlx::query(
                "INSERT INTO processed_messages (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(consumer)
            .bind(message_id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected()
                == 1;
            if !fresh {
                tx.rollback().await.map_err(classify)?;
                return Ok(SagaOutcome::Duplicate);
            }
        }

        let sql =
            format!("SELECT {ORDER_COLUMNS}, correlation_id FROM orders WHERE id = $1 FOR UPDATE");
        let Some(locked): Option<LockedOrder> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?
        else {
            tx.rollback().await.map_err(classify)?;
            return Ok(SagaOutcome::UnknownOrder);
        };
        let order = Order::try_from(locked.order)?;
        let saga: Option<(serde_json::Value,)> =
            sqlx::query_as("SELECT state FROM sagas WHERE order_id = $1")
                .bind(order_id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
        let saga = saga
            .map(|(state,)| serde_json::from_value::<Saga>(state))
            .transpose()
            .map_err(|e| corrupt("saga state", e))?;

        let ctx = SagaContext {
            order,
            correlation_id: locked.correlation_id,
            saga,
        };
        let Some(write) = decide(&ctx) else {
            // Still commit: the message id is now recorded as processed.
            tx.commit().await.map_err(classify)?;
            return Ok(SagaOutcome::NothingToDo);
        };

        let now = Utc::now();
        let state = serde_json::to_value(&write.saga).map_err(|e| StoreError::Other(e.into()))?;
        sqlx::query(
            "INSERT INTO sagas (order_id, state, next_deadline) VALUES ($1, $2, $3)
             ON CONFLICT (order_id) DO UPDATE SET state = EXCLUDED.state,
                 next_deadline = EXCLUDED.next_deadline, updated_at = now()",
        )
        .bind(order_id.0)
        .bind(state)
        .bind(write.saga.next_deadline())
        .execute(&mut *tx)
        .await
        .map_err(classify)?;

        if let Some(settlement) = write.settle {
            // Guarded twice: here by the WHERE clause, and by the transition trigger.
            let updated = sqlx::query(
                "UPDATE orders SET status = $2, cancel_reason = $3, updated_at = $4
                 WHERE id = $1 AND status = 'PROCESSING'",
            )
            .bind(order_id.0)
            .bind(settlement.status().as_str())
            .bind(settlement.cancel_reason().map(|r| r.as_str()))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            if updated != 1 {
                tx.rollback().await.map_err(classify)?;
                return Err(StoreError::Other(anyhow::anyhow!(
                    "order {order_id} was no longer PROCESSING when its saga settled it"
                )));
            }
        }
        insert_outbox(&mut tx, &write.outbox).await?;
        insert_events(&mut tx, &write.events).await?;
        tx.commit().await.map_err(classify)?;
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
