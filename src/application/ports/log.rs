//! The relays' side: the saga log's feeds, and the event log they copy events to.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::application::messages::OutboundMessage;
use crate::domain::{OrderId, SagaEventKind};

use super::errors::{EventLogError, StoreError};

/// Which feed of the saga log a relay drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feed {
    /// The messages, to the broker.
    Messages,
    /// The events, to the event log.
    Events,
}

impl Feed {
    pub const ALL: [Feed; 2] = [Feed::Messages, Feed::Events];

    pub fn as_str(self) -> &'static str {
        match self {
            Feed::Messages => "messages",
            Feed::Events => "events",
        }
    }
}

/// A place in the saga log, in the order the relays read it (opaque to them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition(pub u64, pub i64);

/// A row of the saga log as a relay reads it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub position: LogPosition,
    pub event: Option<EventRecord>,
    pub message: Option<OutboundMessage>,
}

/// What one read of the log found.
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    pub rows: Vec<LogRow>,
    /// Rows that have committed wait after these, held back until a
    /// transaction older than them ends (the writers' commits interleave):
    /// worth reading again in a moment rather than waiting for a wake-up.
    pub held_back: bool,
}

/// What a store's writers handed to its relay since it last asked
/// (`SagaLog::take_committed`).
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub messages: Vec<OutboundMessage>,
    /// Rows with messages were committed that are not among them (written
    /// by another process, or while no relay here held the feed, or more
    /// than the store keeps): only a read finds those.
    pub unhanded: bool,
}

/// The relay's side of the saga log: plain reads, and a position and a
/// holder per feed. Only one relay at a time holds a feed (for a lease it
/// renews); the rows it reads are those every writer has committed, in an
/// order in which no row committed later can come before them.
#[async_trait]
pub trait SagaLog: Send + Sync {
    /// Holds `feed` for `holder` until `lease` from now (taking it over if
    /// its last holder's lease ended), records `position` as relayed if given,
    /// and returns the feed's position. `None`: another relay holds the feed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn claim_feed(
        &self,
        feed: Feed,
        holder: Uuid,
        lease: Duration,
        position: Option<LogPosition>,
    ) -> Result<Option<LogPosition>, StoreError>;
    /// Up to `limit` rows after `after`, with what `feed` takes of them (its
    /// events, or its messages).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn read_log(
        &self,
        feed: Feed,
        after: LogPosition,
        limit: u32,
    ) -> Result<LogBatch, StoreError>;
    /// Waits until new rows may be in the log, or `timeout` passes. Never
    /// fails: when the store cannot tell, it waits for the timeout.
    async fn wait_for_work(&self, feed: Feed, timeout: Duration);
    /// The messages this store's own writers committed since the last call
    /// while a relay of this store held the messages feed, in the order the
    /// writers reported their commits (an order's messages in the order they
    /// were written): that relay may send them at once, before a read
    /// reaches their rows.
    /// Their rows stay in the log like any other, so a message handed over
    /// and then lost (a failed send, a relay that stopped) still goes when a
    /// read finds it.
    fn take_committed(&self) -> Committed;
    /// How many rows of the feed wait after `after`, or after its recorded
    /// position when `None`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn backlog(&self, feed: Feed, after: Option<LogPosition>) -> Result<u64, StoreError>;
}

/// A recorded saga event: one document of the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub event_id: Uuid,
    pub order_id: OrderId,
    /// Position in the global event sequence: orders an order's timeline.
    pub seq: i64,
    pub kind: SagaEventKind,
    pub payload: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// The event log: one document per saga event, no duplicates.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends events; an event id already present is skipped, so appending again is harmless.
    ///
    /// # Errors
    /// [`EventLogError::Unavailable`] when the log cannot be reached (some
    /// events may have been appended: append them all again).
    async fn append(&self, events: &[EventRecord]) -> Result<(), EventLogError>;
    /// An order's events in sequence order.
    ///
    /// # Errors
    /// [`EventLogError::Unavailable`] when the log cannot be reached,
    /// [`EventLogError::Other`] when a stored event cannot be read.
    async fn for_order(&self, order_id: OrderId) -> Result<Vec<EventRecord>, EventLogError>;
    /// Whether the log answers (readiness).
    ///
    /// # Errors
    /// [`EventLogError::Unavailable`] when it does not.
    async fn ping(&self) -> Result<(), EventLogError>;
}
