//! `SagaLog` on PostgreSQL: the append-only `saga_log` table and the relays'
//! positions in `relay_feeds`.
//!
//! Rows are read in `(txid, seq)` order, and only rows of transactions older
//! than every transaction still running (`pg_snapshot_xmin`): each of those
//! has committed or aborted, and every later transaction has a larger txid,
//! so no row can ever appear behind a position already passed, however the
//! writers' commits interleave. (Ordering by `seq` alone would not do: a
//! transaction that took seq 10 and commits after the one that took seq 11
//! would be skipped.) The price: a transaction that stays open anywhere in
//! the cluster holds the relays back until it ends.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::application::messages::{MessageType, OutboundMessage, Topic};
use crate::application::ports::{
    Committed, EventRecord, Feed, LogBatch, LogPosition, LogRow, SagaLog, StoreError,
};
use crate::domain::OrderId;

use super::{PgStore, classify, corrupt};

/// Takes (or renews) the feed for `$2` until `$3` from now and records `$4`,
/// `$5` as its position when given; returns the position. No row when
/// another relay holds the feed.
const CLAIM_SQL: &str = "UPDATE relay_feeds
        SET holder = $2, held_until = now() + $3::interval,
            after_txid = coalesce($4::text::xid8, after_txid),
            after_seq = coalesce($5, after_seq),
            updated_at = now()
      WHERE feed = $1 AND (holder IS NULL OR holder = $2 OR held_until < now())
      RETURNING after_txid::text, after_seq";

/// Up to `{limit}` rows after (`$1`, `$2`) that every writer has finished
/// with. Every row goes through both feeds, each taking its part (`$3`: the
/// events, else the messages), so both positions move over the whole log and the
/// trim can go up to the slower one. A last row with only `held` set tells
/// that committed rows wait at or past the horizon (the position read from
/// is always below it: it was read under an earlier, never later, horizon).
/// The columns are named by their table: a bare `txid` in `ORDER BY` would be
/// the text the row is returned as, whose order is not the numbers' (`"100"`
/// sorts before `"99"`), so at a txid that gains a digit a full batch would
/// take later rows and its position would pass earlier ones unread.
///
/// The position and the feed come through sub-selects (the feed with the
/// horizon), so that each connection keeps one plan (see the module
/// `postgres`): planning a read for its values cost 0.15–0.26 ms, the read
/// itself about 0.05 ms. The limit is written into the statement (a relay
/// always reads the same batch size, so that is one statement): with a limit
/// it cannot see, the planner costs the read at a tenth of the log, so each
/// time the log's statistics grew the general plan looked dearer than the
/// custom plans averaged so far and PostgreSQL planned every read again, for
/// hundreds of reads per connection (seen at 100 orders/s: 1,700 plans in
/// 20 s). Costed at the rows it takes, the plan costs the same however long
/// the log, once it holds a few thousand rows (the trim keeps two an order).
const READ_SQL: &str = "WITH horizon AS MATERIALIZED (
         SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin, $3::boolean AS events
     )
     (SELECT txid::text AS txid, seq, order_id, occurred_at,
            CASE WHEN horizon.events THEN event_id END AS event_id,
            CASE WHEN horizon.events THEN event_type END AS event_type,
            CASE WHEN horizon.events THEN payload END AS payload,
            CASE WHEN NOT horizon.events THEN message_id END AS message_id,
            CASE WHEN NOT horizon.events THEN topic END AS topic,
            CASE WHEN NOT horizon.events THEN message_type END AS message_type,
            CASE WHEN NOT horizon.events THEN correlation_id END AS correlation_id,
            CASE WHEN NOT horizon.events THEN message END AS message,
            false AS held
       FROM saga_log, horizon
      WHERE (saga_log.txid, saga_log.seq) > ((SELECT $1::text::xid8), (SELECT $2::bigint))
        AND saga_log.txid < horizon.xmin
      ORDER BY saga_log.txid, saga_log.seq LIMIT {limit})
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true
       FROM horizon
      WHERE EXISTS (SELECT 1 FROM saga_log l WHERE l.txid >= horizon.xmin)";

#[derive(sqlx::FromRow)]
struct Row {
    txid: Option<String>,
    seq: Option<i64>,
    order_id: Option<Uuid>,
    occurred_at: Option<DateTime<Utc>>,
    event_id: Option<Uuid>,
    event_type: Option<String>,
    payload: Option<serde_json::Value>,
    message_id: Option<Uuid>,
    topic: Option<String>,
    message_type: Option<String>,
    correlation_id: Option<String>,
    message: Option<serde_json::Value>,
    held: bool,
}

fn txid(text: &str) -> Result<u64, StoreError> {
    text.parse().map_err(|e| corrupt("saga log txid", e))
}

impl Row {
    /// The row, or `None` for the row that says rows are held back.
    fn into_log_row(self) -> Result<Option<LogRow>, StoreError> {
        let (Some(txid_text), Some(seq), Some(order_id), Some(at)) =
            (self.txid, self.seq, self.order_id, self.occurred_at)
        else {
            return Ok(None);
        };
        let position = LogPosition(txid(&txid_text)?, seq);
        let event = match (self.event_id, self.event_type, self.payload) {
            (Some(event_id), Some(kind), Some(payload)) => Some(EventRecord {
                event_id,
                order_id: OrderId(order_id),
                seq,
                kind: kind.parse().map_err(|e| corrupt("event type", e))?,
                payload,
                at,
            }),
            _ => None,
        };
        let message = match (
            self.message_id,
            self.topic,
            self.message_type,
            self.correlation_id,
            self.message,
        ) {
            (Some(message_id), Some(topic), Some(kind), Some(correlation_id), Some(payload)) => {
                Some(OutboundMessage {
                    message_id,
                    topic: Topic::from_name(&topic).ok_or_else(|| corrupt("topic", &topic))?,
                    key: order_id.to_string(),
                    message_type: MessageType::parse(&kind)
                        .ok_or_else(|| corrupt("message type", &kind))?,
                    correlation_id,
                    time: at,
                    payload,
                })
            }
            _ => None,
        };
        Ok(Some(LogRow {
            position,
            event,
            message,
        }))
    }
}

impl PgStore {
    /// Deletes up to `limit` rows that both feeds have passed, older than
    /// `before`, but an order's `order_created` and `status_changed` (its
    /// status history). Returns how many went.
    pub(super) async fn trim_log(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM saga_log WHERE (txid, seq) IN (
                 SELECT l.txid, l.seq FROM saga_log l
                  WHERE (l.txid, l.seq) <= ALL (SELECT after_txid, after_seq FROM relay_feeds)
                    AND l.occurred_at < $1
                    AND l.event_type IS DISTINCT FROM 'order_created'
                    AND l.event_type IS DISTINCT FROM 'status_changed'
                  ORDER BY l.txid, l.seq LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SagaLog for PgStore {
    async fn claim_feed(
        &self,
        feed: Feed,
        holder: Uuid,
        lease: Duration,
        position: Option<LogPosition>,
    ) -> Result<Option<LogPosition>, StoreError> {
        let asked = Instant::now();
        let claimed: Result<Option<(String, i64)>, _> = self
            .warm
            .run(async |c| {
                sqlx::query_as(CLAIM_SQL)
                    .bind(feed.as_str())
                    .bind(holder)
                    .bind(lease)
                    .bind(position.map(|p| p.0.to_string()))
                    .bind(position.map(|p| p.1))
                    .fetch_optional(c)
                    .await
            })
            .await;
        // Held from before the claim was asked: never past the database's lease.
        let held = matches!(claimed, Ok(Some(_))).then(|| asked + lease);
        self.wake.hold(feed, held);
        let claimed = claimed.map_err(classify)?;
        claimed
            .map(|(t, seq)| Ok(LogPosition(txid(&t)?, seq)))
            .transpose()
    }

    async fn read_log(
        &self,
        feed: Feed,
        after: LogPosition,
        limit: u32,
    ) -> Result<LogBatch, StoreError> {
        // (A number: nothing from outside goes into the text.)
        let sql = READ_SQL.replace("{limit}", &limit.to_string());
        let rows: Vec<Row> = self
            .warm
            .run(async |c| {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(after.0.to_string())
                    .bind(after.1)
                    .bind(feed == Feed::Events)
                    .fetch_all(c)
                    .await
            })
            .await
            .map_err(classify)?;
        let mut batch = LogBatch {
            rows: Vec::with_capacity(rows.len()),
            held_back: false,
        };
        for row in rows {
            batch.held_back |= row.held;
            if let Some(r) = row.into_log_row()? {
                batch.rows.push(r);
            }
        }
        // (UNION ALL keeps its branches' order, but the relays' positions
        // must not depend on a plan.)
        batch.rows.sort_by_key(|r| r.position);
        Ok(batch)
    }

    async fn wait_for_work(&self, feed: Feed, timeout: Duration) {
        let notify = match feed {
            Feed::Messages => &self.wake.messages,
            Feed::Events => &self.wake.events,
        };
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
    }

    fn take_committed(&self) -> Committed {
        self.wake.take()
    }

    async fn backlog(&self, feed: Feed, after: Option<LogPosition>) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM saga_log l, relay_feeds f
              WHERE f.feed = $1
                AND (l.txid, l.seq) > (coalesce($3::text::xid8, f.after_txid), coalesce($4, f.after_seq))
                AND ($2 OR l.message_id IS NOT NULL)",
        )
        .bind(feed.as_str())
        .bind(feed == Feed::Events)
        .bind(after.map(|p| p.0.to_string()))
        .bind(after.map(|p| p.1))
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(n.max(0) as u64)
    }
}
