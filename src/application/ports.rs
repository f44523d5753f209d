//! The ports: what the use cases need from the outside world.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{NewOrder, Order, OrderId, Saga, SagaEventKind, Settlement, UserId};

use super::messages::{InboundMessage, OutboundMessage};

/// A storage failure: the store is unreachable (retry later) or something else went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Too much work is already waiting for the store: try again shortly.
    #[error("store overloaded: {0}")]
    Overloaded(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("broker: {0}")]
pub struct PublishError(pub String);

/// A saga event about to be recorded (the store assigns its sequence number).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub order_id: OrderId,
    pub kind: SagaEventKind,
    pub payload: serde_json::Value,
    pub at: DateTime<Utc>,
}

impl NewEvent {
    pub fn new(
        order_id: OrderId,
        kind: SagaEventKind,
        payload: serde_json::Value,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            order_id,
            kind,
            payload,
            at,
        }
    }
}

/// One entry of the saga log: an event, and the Kafka message it sends, if
/// any (the order's `order-created`, a command, the settlement). Written once,
/// never changed: the relays copy the event to the event log and publish the
/// message.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub event: NewEvent,
    pub message: Option<OutboundMessage>,
}

impl LogEntry {
    pub fn event(event: NewEvent) -> Self {
        Self {
            event,
            message: None,
        }
    }

    pub fn with_message(event: NewEvent, message: OutboundMessage) -> Self {
        Self {
            event,
            message: Some(message),
        }
    }
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

/// An idempotency key claimed by a request, with a fingerprint of the request.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    pub request: NewOrder,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug)]
pub enum PlaceOutcome {
    Created(Order),
    /// The idempotency key was used before with the same request: its order.
    Replayed(Order),
    /// The idempotency key was used before with a different request.
    KeyConflict,
}

#[derive(Debug, Clone)]
pub struct OrderPage {
    pub total: u64,
    pub orders: Vec<Order>,
}

/// Orders and their status, with the saga log written in the same transaction.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Stores a PROCESSING order and its first log entry (the `order_created`
    /// event with the `order-created` message) atomically: all or nothing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when PostgreSQL cannot be reached,
    /// [`StoreError::Overloaded`] when too many orders already wait to be stored.
    async fn place(
        &self,
        order: &Order,
        correlation_id: &str,
        idempotency: Option<&IdempotencyClaim>,
        entry: &LogEntry,
    ) -> Result<PlaceOutcome, StoreError>;
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
    /// A user's orders, newest first (ties broken by insertion order), and their true count.
    async fn list_for_user(
        &self,
        user: &UserId,
        offset: u64,
        limit: u32,
    ) -> Result<OrderPage, StoreError>;
    /// The most recently placed orders, newest first, whoever placed them.
    async fn recent(&self, limit: u32) -> Result<Vec<Order>, StoreError>;
    /// How many orders are PROCESSING (their saga has not settled them yet).
    async fn processing_count(&self) -> Result<u64, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What a saga decision sees.
#[derive(Debug, Clone)]
pub struct SagaContext {
    pub order: Order,
    pub correlation_id: String,
    pub saga: Option<Saga>,
}

/// What a saga decision writes, atomically: the saga's new state (on its
/// order), the settlement if any, and the log entries.
#[derive(Debug, Clone)]
pub struct SagaWrite {
    pub saga: Saga,
    pub settle: Option<Settlement>,
    pub entries: Vec<LogEntry>,
}

impl SagaWrite {
    /// The messages the entries send.
    pub fn messages(&self) -> impl Iterator<Item = &OutboundMessage> {
        self.entries.iter().filter_map(|e| e.message.as_ref())
    }

    /// The events of the entries.
    pub fn events(&self) -> impl Iterator<Item = &NewEvent> {
        self.entries.iter().map(|e| &e.event)
    }
}

/// A decision taken inside the store's transaction, with the saga locked.
/// `None` means there is nothing to write. The store may take it more than
/// once (a transaction that failed is retried), so it must depend only on
/// what it is given: only the last call's result is written.
pub type SagaDecision = Box<dyn Fn(&SagaContext) -> Option<SagaWrite> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaOutcome {
    Applied,
    /// The decision had nothing to write (a duplicate, a reply that no longer matters).
    NothingToDo,
    UnknownOrder,
}

/// Saga state, with the order and the saga log in one transaction.
#[async_trait]
pub trait SagaStore: Send + Sync {
    /// Locks the order (and its saga), runs `decide` and writes what it
    /// returns, all in one transaction. A redelivered message needs no
    /// bookkeeping of its own: the saga's state says it changes nothing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when PostgreSQL cannot be reached (the
    /// consumer retries the message), [`StoreError::Overloaded`] when too many
    /// decisions wait, [`StoreError::Other`] when the order's row cannot be read
    /// or the decision panicked.
    async fn transact(
        &self,
        order_id: OrderId,
        decide: SagaDecision,
    ) -> Result<SagaOutcome, StoreError>;

    /// Orders whose saga has a deadline at or before `now`, and PROCESSING
    /// orders older than `orphaned_before` that have no saga yet (their
    /// `order-created` message was lost).
    async fn due(
        &self,
        now: DateTime<Utc>,
        orphaned_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError>;

    /// Forgets idempotency keys expired by `now`, and trims the saga log of
    /// rows both feeds have relayed that are older than `log_before` (an
    /// order's `order_created` and `status_changed` stay: they are its status
    /// history). A bounded batch; returns how many rows went.
    async fn purge(&self, now: DateTime<Utc>, log_before: DateTime<Utc>)
    -> Result<u64, StoreError>;
}

/// Why a relay batch did not go through; the rows stay for the next try.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    EventLog(#[from] EventLogError),
}

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
    /// [`StoreError::Unavailable`] when PostgreSQL cannot be reached.
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
    /// [`StoreError::Unavailable`] when PostgreSQL cannot be reached.
    async fn read_log(
        &self,
        feed: Feed,
        after: LogPosition,
        limit: u32,
    ) -> Result<Vec<LogRow>, StoreError>;
    /// Waits until new rows may be in the log, or `timeout` passes.
    async fn wait_for_work(&self, feed: Feed, timeout: Duration);
    /// How many rows of the feed wait after its recorded position.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when PostgreSQL cannot be reached.
    async fn backlog(&self, feed: Feed) -> Result<u64, StoreError>;
}

/// The event log (MongoDB): one document per saga event, no duplicates.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends events; an event id already present is skipped, so appending again is harmless.
    async fn append(&self, events: &[EventRecord]) -> Result<(), EventLogError>;
    /// An order's events in sequence order.
    async fn for_order(&self, order_id: OrderId) -> Result<Vec<EventRecord>, EventLogError>;
    async fn ping(&self) -> Result<(), EventLogError>;
}

/// The message broker, outbound.
#[async_trait]
pub trait MessagePublisher: Send + Sync {
    /// Publishes every message and waits for the broker's acknowledgement of
    /// all of them; any failure fails the call (some may have gone out).
    async fn publish(&self, messages: &[OutboundMessage]) -> Result<(), PublishError>;
    /// Sets a message aside on the dead-letter topic, with why.
    async fn dead_letter(&self, message: &InboundMessage, error: &str) -> Result<(), PublishError>;
    async fn ping(&self) -> Result<(), PublishError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Valid,
    Invalid,
}

#[derive(Debug, thiserror::Error)]
#[error("user API unavailable: {0}")]
pub struct UserDirectoryError(pub String);

/// The user directory (an HTTP API).
#[async_trait]
pub trait UserDirectory: Send + Sync {
    async fn check(&self, user: &UserId) -> Result<UserStatus, UserDirectoryError>;
}

/// Why handling a message failed, which decides what the consumer does next.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be handled: dead-letter it now.
    #[error("poison message: {0}")]
    Poison(String),
    /// A dependency is down: retry the same message (with backoff) until it is back.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// Something else failed: retry a bounded number of times, then dead-letter.
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => HandleError::Unavailable(format!("postgres: {d}")),
            StoreError::Overloaded(d) => HandleError::Unavailable(format!("postgres busy: {d}")),
            StoreError::Other(e) => HandleError::Failed(e),
        }
    }
}

impl From<PublishError> for HandleError {
    fn from(e: PublishError) -> Self {
        HandleError::Unavailable(e.to_string())
    }
}

/// Something that handles messages from the broker (inbound port).
#[async_trait]
pub trait MessageHandler: Send + Sync {
    async fn handle(&self, message: &InboundMessage) -> Result<(), HandleError>;
}
