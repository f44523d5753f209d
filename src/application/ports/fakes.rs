//! In-memory ports, for tests (the use cases' unit tests and the integration
//! tests): what they keep can be read back, and each can be made to fail as
//! its `# Errors` says. Nothing in the service uses them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::application::messages::{InboundMessage, MessageType, OutboundMessage, Topic};
use crate::domain::{Order, OrderId, OrderStatus, Saga, SagaEventKind, UserId};

use super::*;

/// Orders with their sagas and the saga log, as one store: an `OrderStore`
/// and a `SagaStore` whose transactions are one lock.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<Stored>,
    /// While set, every call fails with `StoreError::Unavailable`.
    pub down: AtomicBool,
}

#[derive(Default)]
struct Stored {
    orders: Vec<(Order, String, Option<Saga>)>,
    keys: HashMap<String, (crate::domain::NewOrder, OrderId)>,
    log: Vec<LogEntry>,
    /// Saga transactions taken (`transact` and `transact_all` calls).
    transactions: usize,
}

impl MemoryStore {
    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(())
    }

    /// Saga transactions taken so far: one per `transact` or `transact_all`.
    pub fn transactions(&self) -> usize {
        self.state.lock().unwrap().transactions
    }

    /// Every entry written, in order.
    pub fn log(&self) -> Vec<LogEntry> {
        self.state.lock().unwrap().log.clone()
    }

    /// An order as stored, with its saga.
    pub fn order(&self, id: OrderId) -> Option<(Order, Option<Saga>)> {
        let state = self.state.lock().unwrap();
        state
            .orders
            .iter()
            .find(|(o, _, _)| o.id == id)
            .map(|(o, _, s)| (o.clone(), s.clone()))
    }
}

#[async_trait]
impl OrderStore for MemoryStore {
    async fn place(
        &self,
        order: &Order,
        correlation_id: &str,
        idempotency: Option<&IdempotencyClaim>,
        entry: &LogEntry,
    ) -> Result<PlaceOutcome, StoreError> {
        self.up()?;
        let mut state = self.state.lock().unwrap();
        if let Some(claim) = idempotency {
            if let Some((request, id)) = state.keys.get(&claim.key) {
                if *request != claim.request {
                    return Ok(PlaceOutcome::KeyConflict);
                }
                let id = *id;
                let first = state.orders.iter().find(|(o, _, _)| o.id == id);
                return Ok(PlaceOutcome::Replayed(first.unwrap().0.clone()));
            }
            state
                .keys
                .insert(claim.key.clone(), (claim.request.clone(), order.id));
        }
        state
            .orders
            .push((order.clone(), correlation_id.to_owned(), None));
        state.log.push(entry.clone());
        Ok(PlaceOutcome::Created(order.clone()))
    }

    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.up()?;
        Ok(self.order(id).map(|(o, _)| o))
    }

    async fn list_for_user(
        &self,
        user: &UserId,
        offset: u64,
        limit: u32,
    ) -> Result<OrderPage, StoreError> {
        self.up()?;
        let state = self.state.lock().unwrap();
        let mine: Vec<Order> = state
            .orders
            .iter()
            .rev()
            .filter(|(o, _, _)| &o.user_id == user)
            .map(|(o, _, _)| o.clone())
            .collect();
        Ok(OrderPage {
            total: mine.len() as u64,
            orders: mine
                .into_iter()
                .skip(offset as usize)
                .take(limit as usize)
                .collect(),
        })
    }

    async fn recent(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        self.up()?;
        let state = self.state.lock().unwrap();
        Ok(state
            .orders
            .iter()
            .rev()
            .take(limit as usize)
            .map(|(o, _, _)| o.clone())
            .collect())
    }

    async fn processing_count(&self) -> Result<u64, StoreError> {
        self.up()?;
        let state = self.state.lock().unwrap();
        Ok(state
            .orders
            .iter()
            .filter(|(o, _, _)| o.status == OrderStatus::Processing)
            .count() as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.up()
    }
}

impl Stored {
    /// Runs a decision on an order and applies what it writes.
    fn decide(
        &mut self,
        order_id: OrderId,
        decide: &SagaDecision,
    ) -> Result<SagaOutcome, StoreError> {
        let Some(i) = self.orders.iter().position(|(o, _, _)| o.id == order_id) else {
            return Ok(SagaOutcome::UnknownOrder);
        };
        let (order, correlation_id, saga) = self.orders[i].clone();
        let ctx = SagaContext {
            order,
            correlation_id,
            saga,
        };
        let Some(write) = decide(&ctx) else {
            return Ok(SagaOutcome::NothingToDo);
        };
        let stored = &mut self.orders[i];
        if let Some(settlement) = write.settle {
            if !stored.0.status.can_become(settlement.status()) {
                return Err(StoreError::Other(anyhow::anyhow!(
                    "order {order_id} cannot go from {} to {}",
                    stored.0.status,
                    settlement.status()
                )));
            }
            stored.0.status = settlement.status();
            stored.0.cancel_reason = settlement.cancel_reason();
        }
        stored.2 = Some(write.saga);
        self.log.extend(write.entries);
        Ok(SagaOutcome::Applied)
    }
}

#[async_trait]
impl SagaStore for MemoryStore {
    async fn transact(
        &self,
        order_id: OrderId,
        decide: SagaDecision,
    ) -> Result<SagaOutcome, StoreError> {
        self.up()?;
        let mut state = self.state.lock().unwrap();
        state.transactions += 1;
        state.decide(order_id, &decide)
    }

    async fn transact_all(
        &self,
        order_id: OrderId,
        decisions: Vec<SagaDecision>,
    ) -> Vec<Result<SagaOutcome, StoreError>> {
        if let Err(e) = self.up() {
            return decisions.iter().map(|_| Err(e.again())).collect();
        }
        let mut state = self.state.lock().unwrap();
        state.transactions += 1;
        decisions
            .iter()
            .map(|decide| state.decide(order_id, decide))
            .collect()
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        orphaned_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError> {
        self.up()?;
        let state = self.state.lock().unwrap();
        Ok(state
            .orders
            .iter()
            .filter(|(o, _, saga)| match saga {
                Some(s) => s.next_deadline().is_some_and(|d| d <= now),
                None => o.status == OrderStatus::Processing && o.created_at < orphaned_before,
            })
            .take(limit as usize)
            .map(|(o, _, _)| o.id)
            .collect())
    }

    async fn purge(
        &self,
        _now: DateTime<Utc>,
        _log_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.up()?;
        Ok(0)
    }
}

/// An in-memory saga log: rows, and a position and a holder per feed.
#[derive(Default)]
pub struct MemoryLog {
    rows: Mutex<Vec<LogRow>>,
    feeds: Mutex<HashMap<Feed, (LogPosition, Option<Uuid>)>>,
    handed: Mutex<Committed>,
}

impl MemoryLog {
    /// Appends a `command_sent` row, with its message if `with_message`, as
    /// another process would: no message is handed over.
    pub fn push(&self, with_message: bool) {
        let row = self.append(with_message);
        if row.message.is_some() {
            self.handed.lock().unwrap().unhanded = true;
        }
    }

    /// Appends a `command_sent` row with a message, as this process's writer
    /// would: its message is handed over too.
    pub fn push_handed(&self) {
        let row = self.append(true);
        self.handed.lock().unwrap().messages.extend(row.message);
    }

    fn append(&self, with_message: bool) -> LogRow {
        let mut rows = self.rows.lock().unwrap();
        let position = LogPosition(1, rows.len() as i64 + 1);
        let order_id = OrderId::new();
        rows.push(LogRow {
            position,
            event: Some(EventRecord {
                event_id: Uuid::new_v4(),
                order_id,
                seq: position.1,
                kind: SagaEventKind::CommandSent,
                payload: serde_json::json!({}),
                at: Utc::now(),
            }),
            message: with_message.then(|| {
                OutboundMessage::new(
                    Uuid::new_v4(),
                    Topic::UserValidationCommands,
                    order_id,
                    MessageType::ValidateUser,
                    "c",
                    &serde_json::json!({}),
                )
            }),
        });
        rows.last().cloned().expect("just pushed")
    }

    /// The position recorded for `feed`.
    pub fn position(&self, feed: Feed) -> LogPosition {
        self.feeds
            .lock()
            .unwrap()
            .get(&feed)
            .map_or(LogPosition(0, 0), |f| f.0)
    }
}

#[async_trait]
impl SagaLog for MemoryLog {
    async fn claim_feed(
        &self,
        feed: Feed,
        holder: Uuid,
        _lease: Duration,
        position: Option<LogPosition>,
    ) -> Result<Option<LogPosition>, StoreError> {
        let mut feeds = self.feeds.lock().unwrap();
        let entry = feeds.entry(feed).or_insert((LogPosition(0, 0), None));
        if entry.1.is_some_and(|h| h != holder) {
            return Ok(None);
        }
        entry.1 = Some(holder);
        if let Some(p) = position {
            entry.0 = p;
        }
        Ok(Some(entry.0))
    }

    async fn read_log(
        &self,
        _feed: Feed,
        after: LogPosition,
        limit: u32,
    ) -> Result<LogBatch, StoreError> {
        let rows = self
            .rows
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.position > after)
            .take(limit as usize)
            .cloned()
            .collect();
        Ok(LogBatch {
            rows,
            held_back: false,
        })
    }

    async fn wait_for_work(&self, _feed: Feed, _timeout: Duration) {}

    fn take_committed(&self) -> Committed {
        std::mem::take(&mut *self.handed.lock().unwrap())
    }

    async fn backlog(&self, _feed: Feed, _after: Option<LogPosition>) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// A broker that keeps what it is given; while `fail` is set it refuses.
#[derive(Default)]
pub struct MemoryBroker {
    pub sent: Mutex<Vec<OutboundMessage>>,
    pub dead: Mutex<Vec<(InboundMessage, String)>>,
    pub fail: AtomicBool,
}

impl MemoryBroker {
    /// A broker that refuses until `fail` is cleared.
    pub fn failing() -> Self {
        let broker = Self::default();
        broker.fail.store(true, Ordering::SeqCst);
        broker
    }

    /// What it was given, in order.
    pub fn sent(&self) -> Vec<OutboundMessage> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl MessagePublisher for MemoryBroker {
    async fn publish(&self, messages: &[OutboundMessage]) -> Result<(), PublishError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(PublishError("broker down (test)".into()));
        }
        self.sent.lock().unwrap().extend_from_slice(messages);
        Ok(())
    }

    async fn dead_letter(&self, message: &InboundMessage, error: &str) -> Result<(), PublishError> {
        self.dead
            .lock()
            .unwrap()
            .push((message.clone(), error.to_owned()));
        Ok(())
    }

    async fn ping(&self) -> Result<(), PublishError> {
        Ok(())
    }
}

/// An event log that keeps what it is given (as given: a test sees what
/// was appended twice); while `fail` is set it is unavailable.
#[derive(Default)]
pub struct MemoryEvents {
    pub events: Mutex<Vec<EventRecord>>,
    pub fail: AtomicBool,
}

#[async_trait]
impl EventLog for MemoryEvents {
    async fn append(&self, events: &[EventRecord]) -> Result<(), EventLogError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(EventLogError::Unavailable("event log down (test)".into()));
        }
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }

    async fn for_order(&self, order_id: OrderId) -> Result<Vec<EventRecord>, EventLogError> {
        let kept = self.events.lock().unwrap();
        Ok(kept
            .iter()
            .filter(|e| e.order_id == order_id)
            .cloned()
            .collect())
    }

    async fn ping(&self) -> Result<(), EventLogError> {
        Ok(())
    }
}

/// The user directory's rule of the stub: an id containing `invalid` is invalid.
pub struct MemoryDirectory;

#[async_trait]
impl UserDirectory for MemoryDirectory {
    async fn check(&self, user: &UserId) -> Result<UserStatus, UserDirectoryError> {
        Ok(if user.as_str().contains("invalid") {
            UserStatus::Invalid
        } else {
            UserStatus::Valid
        })
    }
}
