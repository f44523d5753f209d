//! `Outbox` on PostgreSQL: batches locked with `FOR UPDATE SKIP LOCKED`, so
//! several relays can run side by side, each taking different rows.
//!
//! Where a relay runs in the writing process, its writers hand it the
//! messages they committed (`HandOff`), so it sends them without reading
//! them back; the rows stay in the table, leased, as the fallback, and are
//! deleted a few at a time once the broker has them.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

/// Most handed-off messages kept in memory. Past it, a message is not
/// queued: its row waits for its lease to end and a relay's scan.
const HAND_OFF_MAX: usize = 10_000;

/// Longest a sent message's row waits to be deleted with others (while
/// messages keep coming; the relay deletes at once when it finds none).
const DELETE_GATHER: Duration = Duration::from_millis(50);

/// Messages this process committed, waiting for its relay (`Wake::committed`).
pub(crate) struct HandOff {
    pub(super) lease: Duration,
    /// Each with when it was handed.
    waiting: Mutex<VecDeque<(Instant, OutboundMessage)>>,
    /// Sent, rows not deleted yet; and when the oldest of them was sent.
    sent: Mutex<(Vec<Uuid>, Option<Instant>)>,
}

impl HandOff {
    pub(super) fn new(lease: Duration) -> Self {
        Self {
            lease,
            waiting: Mutex::new(VecDeque::new()),
            sent: Mutex::new((Vec::new(), None)),
        }
    }

    pub(super) fn give(&self, messages: Vec<OutboundMessage>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let room = HAND_OFF_MAX.saturating_sub(waiting.len());
        if room < messages.len() {
            tracing::debug!(
                dropped = messages.len() - room,
                "hand-off full; those messages wait for their lease to end"
            );
        }
        let now = Instant::now();
        waiting.extend(messages.into_iter().take(room).map(|m| (now, m)));
    }

    /// Up to `limit` messages, and whether some were left to the scan
    /// instead: those that waited half their lease (the broker was down,
    /// say) could be sent by a scan as well once it ends.
    fn take(&self, limit: u32) -> (Vec<OutboundMessage>, bool) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = Vec::new();
        let mut stale = false;
        while taken.len() < limit as usize {
            let Some((at, message)) = waiting.pop_front() else {
                break;
            };
            if at.elapsed() < self.lease / 2 {
                taken.push(message);
            } else {
                stale = true;
            }
        }
        (taken, stale)
    }

    fn sent(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.0.extend(ids);
        sent.1.get_or_insert_with(Instant::now);
    }

    /// The sent ids to delete now: all of them if `now`, or if the oldest
    /// has waited `DELETE_GATHER`.
    fn to_delete(&self, now: bool) -> Vec<Uuid> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        match sent.1 {
            Some(since) if now || since.elapsed() >= DELETE_GATHER => {
                sent.1 = None;
                std::mem::take(&mut sent.0)
            }
            _ => Vec::new(),
        }
    }
}

impl PgStore {
    /// Sends the handed-off messages. If the broker fails them, their rows
    /// are released to the scan at once rather than when the lease ends.
    async fn relay_handed(
        &self,
        hand_off: &HandOff,
        messages: Vec<OutboundMessage>,
        sink: &dyn MessagePublisher,
    ) -> Result<usize, RelayError> {
        if let Err(e) = sink.publish(&messages).await {
            let ids: Vec<Uuid> = messages.iter().map(|m| m.message_id).collect();
            if let Err(release) =
                sqlx::query("UPDATE outbox SET handed_until = NULL WHERE message_id = ANY($1)")
                    .bind(&ids)
                    .execute(&self.pool)
                    .await
            {
                tracing::debug!(error = %release, "cannot release handed-off messages; they wait for their lease to end");
            }
            self.wake.scan_due.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        hand_off.sent(messages.iter().map(|m| m.message_id));
        self.delete_sent(hand_off, false).await?;
        Ok(messages.len())
    }

    /// Deletes the rows of sent messages, together. Losing this write (a
    /// crash before it, or before its flush) means those messages are sent
    /// again when their lease ends, which consumers already tolerate.
    async fn delete_sent(&self, hand_off: &HandOff, now: bool) -> Result<(), RelayError> {
        let ids = hand_off.to_delete(now);
        if ids.is_empty() {
            return Ok(());
        }
        if let Err(e) = sqlx::query("DELETE FROM outbox WHERE message_id = ANY($1)")
            .bind(&ids)
            .execute(&self.pool)
            .await
        {
            hand_off.sent(ids); // try again next time
            return Err(classify(e).into());
        }
        Ok(())
    }

    /// Reads a batch of messages from the table, sends them and deletes them:
    /// rows not reserved for a hand-off, or whose lease has ended.
    async fn scan_messages(
        &self,
        limit: u32,
        sink: &dyn MessagePublisher,
    ) -> Result<usize, RelayError> {
        let mut tx = self.begin_relay().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, message_id, topic, message_key, message_type, correlation_id, payload, created_at
             FROM outbox WHERE handed_until IS NULL OR handed_until < now()
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
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
        if let Err(e) = sink.publish(&messages).await {
            // Release the rows now: a dropped transaction rolls back only when
            // its connection is next used, and another relay (or this one's
            // next try, on another connection) would skip them as locked.
            let _ = tx.rollback().await;
            return Err(e.into());
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(ids.len())
    }

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
    /// With a hand-off, sends what was handed; finding nothing handed, it
    /// deletes the sent rows and reads the table only if rows may be there
    /// that no hand-off brings (`Wake::scan_due`). Without one, it reads the table.
    async fn relay_messages(
        &self,
        limit: u32,
        sink: &dyn MessagePublisher,
    ) -> Result<usize, RelayError> {
        if let Some(hand_off) = &self.wake.hand_off {
            let (handed, stale) = hand_off.take(limit);
            if stale {
                self.wake.scan_due.store(true, Ordering::SeqCst);
            }
            if !handed.is_empty() {
                return self.relay_handed(hand_off, handed, sink).await;
            }
            self.delete_sent(hand_off, true).await?;
            if !self.wake.scan_due.swap(false, Ordering::SeqCst) {
                return Ok(0);
            }
        }
        let scanned = self.scan_messages(limit, sink).await;
        if !matches!(scanned, Ok(n) if n < limit as usize) {
            // More may be waiting, or the scan failed: read the table again next time.
            self.wake.scan_due.store(true, Ordering::SeqCst);
        }
        scanned
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
        if let Err(e) = sink.append(&events).await {
            let _ = tx.rollback().await; // release the rows at once (see scan_messages)
            return Err(e.into());
        }
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
        let idle = tokio::time::timeout(timeout, notify.notified())
            .await
            .is_err();
        if idle && kind == OutboxKind::Messages {
            // Look for rows a notification missed, and for leases that ended.
            self.wake.scan_due.store(true, Ordering::SeqCst);
        }
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
