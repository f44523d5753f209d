//! The saga store: a decision about an order, taken on its current state and written in one transaction (never on a state that changed meanwhile); and what the saga log's entries are.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::application::messages::OutboundMessage;
use crate::domain::{Order, OrderId, Saga, SagaEventKind, Settlement};

use super::errors::StoreError;

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

/// One entry of the saga log: an event, and the broker message it sends, if
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
    /// Runs `decide` on the order (and its saga) as it is and writes what it
    /// returns in one transaction, only if the order has not changed since;
    /// if it has, runs `decide` again on the new state. Decisions about one
    /// order therefore never interleave. A redelivered message needs no
    /// bookkeeping of its own: the saga's state says it changes nothing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached (the
    /// consumer retries the message), [`StoreError::Overloaded`] when too many
    /// decisions wait or the order kept changing, [`StoreError::Other`] when the
    /// order's row cannot be read, the decision panicked or it settles an order
    /// already settled.
    async fn transact(
        &self,
        order_id: OrderId,
        decide: SagaDecision,
    ) -> Result<SagaOutcome, StoreError>;

    /// Runs `decisions` about one order one after the other, each on the
    /// state the one before left, in one transaction, and writes the order
    /// once (both replies of an order, say). Each decision's outcome, in order.
    ///
    /// The default takes them one transaction each; a store that can do
    /// better should.
    ///
    /// # Errors
    /// As [`SagaStore::transact`], for each decision.
    async fn transact_all(
        &self,
        order_id: OrderId,
        decisions: Vec<SagaDecision>,
    ) -> Vec<Result<SagaOutcome, StoreError>> {
        let mut outcomes = Vec::with_capacity(decisions.len());
        for decide in decisions {
            outcomes.push(self.transact(order_id, decide).await);
        }
        outcomes
    }

    /// Orders whose saga has a deadline at or before `now`, and PROCESSING
    /// orders older than `orphaned_before` that have no saga yet (their
    /// `order-created` message was lost).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
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
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn purge(&self, now: DateTime<Utc>, log_before: DateTime<Utc>)
    -> Result<u64, StoreError>;
}
