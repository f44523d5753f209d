//! `Outbox` on PostgreSQL: batches locked with `FOR UPDATE SKIP LOCKED`, so
//! several relays can run side by side, each taking different rows.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::application::messages::{MessageType, OutboundMessage, Topic};
use crate::application::ports::{
    EventLog, EventRecord, MessagePublisher, Outbox, OutboxKind, RelayError, StoreError,
};
use crate::domain::OrderId;

use super::{PgStore, classify, corrupt};

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    message_id: Uuid,
    topic: String,
    message_key: String,
    message_type: String,
    correlation_id: String,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl TryFrom<OutboxRow> for OutboundMessage {
    type Error = StoreError;
    fn try_from(r: OutboxRow) -> Result<Self, StoreError> {
        Ok(OutboundMessage {
            message_id: r.message_id,
            topic: Topic::from_name(&r.topic).ok_or_else(|| corrupt("outbox topic", &r.topic))?,
            key: r.message_key,
            message_type: MessageType::parse(&r.message_type)
                .ok_or_else(|| corrupt("outbox message type", &r.message_type))?,
            correlation_id: r.correlation_id,
            time: r.created_at,
            payload: r.payload,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    event_id: Uuid,
    order_id: Uuid,
    event_type: String,
    payload: serde_json::Value,
    occurred_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for EventRecord {
    type Error = StoreError;
    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        Ok(EventRecord {
            event_id: r.event_id,
            order_id: OrderId(r.order_id),
            seq: r.seq,
            kind: r.event_type.parse().map_err(|e| corrupt("event type", e))?,
            payload: r.payload,
            at: r.occurred_at,
        })
    }
}

impl PgStore {
    /// A relay transaction. It commits without waiting for the flush to
    /// disk: if the server crashes and forgets the commit, the rows are
    /// relayed again, which the consumers and the event log (unique event ids)
    /// already tolerate. Under load this keeps the relay's many small commits
    /// out of the queue for WAL flushes that the saga's commits wait in.
    async fn begin_relay(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(tx)
    }
}

#[async_trait]
impl Outbox for PgStore {
    async fn relay_messages(
        &self,
        limit: u32,
        sink: &dyn MessagePublisher,
    ) -> Result<usize, RelayError> {
        let mut tx = self.begin_relay().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, message_id, topic, message_key, message_type, correlation_id, payload, created_at
             FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let messages = rows
            .into_iter()
            .map(OutboundMessage::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        sink.publish(&messages).await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(ids.len())
    }

    async fn relay_events(&self, limit: u32, sink: &dyn EventLog) -> Result<usize, RelayError> {
        let mut tx = self.begin_relay().await?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, event_id, order_id, event_type, payload, occurred_at
             FROM saga_events WHERE logged_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let events = rows
            .into_iter()
            .map(EventRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        sink.append(&events).await?;
        sqlx::query("UPDATE saga_events SET logged_at = now() WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(seqs.len())
    }

    async fn wait_for_work(&self, kind: OutboxKind, timeout: Duration) {
        let notify = match kind {
            OutboxKind::Messages => &self.wake.messages,
            OutboxKind::Events => &self.wake.events,
        };
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
    }

    async fn backlog(&self, kind: OutboxKind) -> Result<u64, StoreError> {
        let sql = match kind {
            OutboxKind::Messages => "SELECT count(*) FROM outbox",
            OutboxKind::Events => "SELECT count(*) FROM saga_events WHERE logged_at IS NULL",
        };
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(n.max(0) as u64)
    }
}
