//! Use cases behind the HTTP API: place, get and list orders, read an order's events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{Duration, SubsecRound, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::domain::{FieldError, NewOrder, Order, OrderId, SagaEventKind, UserId};

use super::error::AppError;
use super::messages::{MessageType, OrderCreated, OutboundMessage, Topic};
use super::ports::{
    EventLog, EventRecord, IdempotencyClaim, LogEntry, NewEvent, OrderPage, OrderStore,
    PlaceOutcome,
};

/// Most orders one page may hold.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub struct OrderService {
    store: Arc<dyn OrderStore>,
    events: Arc<dyn EventLog>,
    idempotency_ttl: Duration,
    admission: Arc<Admission>,
}

/// Admission control: new orders are refused (503, `Retry-After`) while
/// `limit` or more orders are PROCESSING. Past what the saga settles per
/// second, a queue of accepted orders only grows, and orders that wait
/// longer than the step deadlines get canceled; a refused client can retry.
/// The count is the store's, refreshed by `Admission::run`, plus the orders
/// this process accepted since.
pub struct Admission {
    /// 0: no limit.
    limit: u64,
    processing: AtomicU64,
}

/// PROCESSING orders at which new ones are refused, unless configured otherwise.
pub const DEFAULT_MAX_PROCESSING: u64 = 1000;

/// Seconds a refused client is told to wait.
const RETRY_AFTER_SECS: u32 = 1;

impl Admission {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            processing: AtomicU64::new(0),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(0)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn admit(&self) -> Result<(), AppError> {
        let processing = self.processing.load(Ordering::Relaxed);
        if self.limit > 0 && processing >= self.limit {
            return Err(AppError::Overloaded(
                format!(
                    "{processing} orders are still being validated (the limit is {}, API_MAX_PROCESSING); retry later",
                    self.limit
                ),
                RETRY_AFTER_SECS,
            ));
        }
        Ok(())
    }

    /// Keeps the count current until `shutdown`; a failed count keeps the last one.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn OrderStore>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match store.processing_count().await {
                Ok(n) => self.processing.store(n, Ordering::Relaxed),
                Err(e) => tracing::debug!(error = %e, "cannot count PROCESSING orders"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// A placed order, and whether this request created it or replayed an earlier one.
#[derive(Debug)]
pub struct Placed {
    pub order: Order,
    pub created: bool,
}

impl OrderService {
    pub fn new(
        store: Arc<dyn OrderStore>,
        events: Arc<dyn EventLog>,
        idempotency_ttl: Duration,
    ) -> Self {
        Self {
            store,
            events,
            idempotency_ttl,
            admission: Arc::new(Admission::unlimited()),
        }
    }

    /// The same service, refusing new orders as `admission` says.
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Stores the order as PROCESSING with its `order_created` entry (and its
    /// `order-created` message) in the saga log, atomically. With an idempotency key, a repeat of the same
    /// request returns the first order; a different request with that key is a conflict.
    pub async fn place(
        &self,
        new: NewOrder,
        correlation_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Placed, AppError> {
        // Microseconds: what the store keeps, so the response matches later reads.
        let now = Utc::now().trunc_subsecs(6);
        let claim = match idempotency_key {
            None => None,
            Some(key) => {
                if key.is_empty()
                    || key.len() > MAX_IDEMPOTENCY_KEY_LEN
                    || !key.bytes().all(|b| (0x20..=0x7e).contains(&b))
                {
                    return Err(AppError::Rejected(FieldError::new(
                        "Idempotency-Key",
                        format!(
                            "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
                        ),
                    )));
                }
                Some(IdempotencyClaim {
                    key: key.to_owned(),
                    request: new.clone(),
                    expires_at: now + self.idempotency_ttl,
                })
            }
        };
        self.admission.admit()?;
        let order = Order::place(OrderId::new(), new, now);
        let payload = OrderCreated {
            order_id: order.id,
            user_id: order.user_id.clone(),
            value: order.value,
            installment: order.installment.get(),
            method: order.method,
            created_at: order.created_at,
        };
        let message = OutboundMessage::new(
            Uuid::new_v4(),
            Topic::OrdersCreated,
            order.id,
            MessageType::OrderCreated,
            correlation_id,
            &payload,
        );
        let event = NewEvent::new(
            order.id,
            SagaEventKind::OrderCreated,
            json!({
                "value": order.value,
                "user_id": order.user_id,
                "installment": order.installment,
                "method": order.method,
                "correlation_id": correlation_id,
            }),
            now,
        );
        let entry = LogEntry::with_message(event, message);
        match self
            .store
            .place(&order, correlation_id, claim.as_ref(), &entry)
            .await?
        {
            PlaceOutcome::Created(order) => {
                ::metrics::counter!(crate::metrics::ORDERS_PLACED).increment(1);
                self.admission.processing.fetch_add(1, Ordering::Relaxed);
                Ok(Placed {
                    order,
                    created: true,
                })
            }
            PlaceOutcome::Replayed(order) => Ok(Placed {
                order,
                created: false,
            }),
            PlaceOutcome::KeyConflict => Err(AppError::Conflict(
                "Idempotency-Key was already used with a different order form".into(),
            )),
        }
    }

    pub async fn get(&self, id: OrderId) -> Result<Order, AppError> {
        self.store.get(id).await?.ok_or_else(|| AppError::NotFound {
            what: "order",
            id: id.to_string(),
        })
    }

    /// A page of the user's orders, newest first; `limit` is capped at [`MAX_PAGE_SIZE`].
    pub async fn list(
        &self,
        user: &UserId,
        offset: u64,
        limit: u32,
    ) -> Result<(u32, OrderPage), AppError> {
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        Ok((limit, self.store.list_for_user(user, offset, limit).await?))
    }

    /// The most recently placed orders (at most [`MAX_PAGE_SIZE`]), newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<Order>, AppError> {
        Ok(self.store.recent(limit.clamp(1, MAX_PAGE_SIZE)).await?)
    }

    /// The order's saga timeline from the event log.
    pub async fn events(&self, id: OrderId) -> Result<Vec<EventRecord>, AppError> {
        self.get(id).await?;
        Ok(self.events.for_order(id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::ports::fakes::{MemoryEvents, MemoryStore};

    fn form(value: &str) -> NewOrder {
        NewOrder::parse(Some(value), Some("u1"), Some("1"), Some("cash")).unwrap()
    }

    fn service(store: &Arc<MemoryStore>) -> OrderService {
        OrderService::new(
            store.clone(),
            Arc::new(MemoryEvents::default()),
            Duration::hours(1),
        )
    }

    #[tokio::test]
    async fn placing_stores_the_order_processing_with_its_created_entry_and_message() {
        let store = Arc::new(MemoryStore::default());
        let placed = service(&store)
            .place(form("10.00"), "c1", None)
            .await
            .unwrap();
        assert!(placed.created);
        assert_eq!(placed.order.status, crate::domain::OrderStatus::Processing);
        let log = store.log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].event.kind, SagaEventKind::OrderCreated);
        let message = log[0].message.as_ref().expect("the order-created message");
        assert_eq!(message.topic, Topic::OrdersCreated);
        assert_eq!(message.correlation_id, "c1");
        assert_eq!(message.payload["order_id"], placed.order.id.to_string());
    }

    #[tokio::test]
    async fn an_idempotency_key_replays_its_order_and_refuses_another_form() {
        let store = Arc::new(MemoryStore::default());
        let svc = service(&store);
        let first = svc.place(form("10.00"), "c1", Some("k")).await.unwrap();
        let again = svc.place(form("10.00"), "c2", Some("k")).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.order.id, first.order.id);
        let other = svc.place(form("11.00"), "c3", Some("k")).await;
        assert!(matches!(other, Err(AppError::Conflict(_))), "{other:?}");
        assert_eq!(store.log().len(), 1, "one order, one entry");
    }

    #[tokio::test]
    async fn a_bad_idempotency_key_is_refused_before_the_store_is_asked() {
        let store = Arc::new(MemoryStore::default());
        store.down.store(true, Ordering::SeqCst);
        let placed = service(&store).place(form("10.00"), "c", Some("")).await;
        assert!(matches!(placed, Err(AppError::Rejected(_))), "{placed:?}");
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_reached_makes_the_request_unavailable() {
        let store = Arc::new(MemoryStore::default());
        store.down.store(true, Ordering::SeqCst);
        let placed = service(&store).place(form("10.00"), "c", None).await;
        assert!(
            matches!(placed, Err(AppError::Unavailable { .. })),
            "{placed:?}"
        );
    }

    #[tokio::test]
    async fn admission_refuses_new_orders_at_its_limit() {
        let store = Arc::new(MemoryStore::default());
        let svc = service(&store).with_admission(Arc::new(Admission::new(1)));
        svc.place(form("10.00"), "c", None).await.unwrap();
        let refused = svc.place(form("10.00"), "c", None).await;
        assert!(
            matches!(refused, Err(AppError::Overloaded(..))),
            "{refused:?}"
        );
        assert_eq!(store.log().len(), 1);
    }

    #[tokio::test]
    async fn an_unknown_orders_events_are_not_found() {
        let store = Arc::new(MemoryStore::default());
        let events = service(&store).events(OrderId::new()).await;
        assert!(
            matches!(events, Err(AppError::NotFound { .. })),
            "{events:?}"
        );
    }
}
