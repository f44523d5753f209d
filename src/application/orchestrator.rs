//! The orchestrator: drives each order's saga from the messages it receives and
//! from its deadlines.
//!
//! Every decision runs on the order's current state and is written in one
//! store transaction, only if the order has not changed since (otherwise the
//! store takes it again on the new state): the saga's state (on the order),
//! the order's status and the saga log's entries (each event with the
//! command or settlement message it sends) are written together or not at
//! all. The state machine ignores a redelivered
//! `order-created` (the saga exists), a reply to a step that is already
//! answered, and replies that no longer matter, so handling a message twice
//! changes nothing and no message id needs recording.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{
    Effect, OrderId, OrderStatus, Saga, SagaEventKind, SagaPolicy, Step, StepOutcome,
};

use super::messages::{
    BalanceValidated, InboundMessage, MessageType, OrderCreated, OrderSettled, OutboundMessage,
    Topic, UserValidated, ValidateBalance, ValidateUser,
};
use super::pairing::{Arrival, Pairing};
use super::ports::{
    HandleError, LogEntry, MessageHandler, NewEvent, SagaContext, SagaDecision, SagaOutcome,
    SagaStore, SagaWrite, StoreError,
};

/// A reply older than this many reply holds when it is handled does not wait
/// for its partner (see `Orchestrator::with_reply_hold`).
const STALE_HOLDS: u32 = 5;
/// Orders one sweep looks at; after a full one the sweeper sweeps again at once.
const SWEEP_BATCH: u32 = 100;
/// How often the sweeper also forgets expired idempotency keys and trims the saga log.
const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Orchestrator {
    store: Arc<dyn SagaStore>,
    policy: SagaPolicy,
    /// How long a PROCESSING order may wait for its saga to start before the sweeper starts it.
    start_grace: Duration,
    /// How long a passing reply waits for its order's other reply (zero: never).
    reply_hold: std::time::Duration,
    pairing: Pairing<Partner>,
}

#[derive(Debug, Clone, Copy)]
enum Input {
    Start,
    Reply(Reply),
    Tick,
}

/// A validator's reply, as the orchestrator received it.
#[derive(Debug, Clone, Copy)]
struct Reply {
    step: Step,
    attempt: u32,
    outcome: StepOutcome,
    message_id: Uuid,
    /// When the orchestrator got it: the time of its decision, however
    /// long it then waited for a writer or for its partner.
    received_at: DateTime<Utc>,
    /// The message's `message-time` (the validator's clock), if readable.
    sent_at: Option<DateTime<Utc>>,
}

/// A reply handed to its order's waiting first reply, to be decided with it;
/// its outcome goes back on `done`.
struct Partner {
    reply: Reply,
    done: oneshot::Sender<Result<SagaOutcome, HandleError>>,
}

impl Orchestrator {
    pub fn new(store: Arc<dyn SagaStore>, policy: SagaPolicy, start_grace: Duration) -> Self {
        Self {
            store,
            policy,
            start_grace,
            reply_hold: std::time::Duration::ZERO,
            pairing: Pairing::default(),
        }
    }

    /// The same orchestrator, a passing reply waiting up to `hold` for its
    /// order's other reply so that both are written together (see
    /// `application::pairing`). Only worth it when the consumer handles
    /// several messages of a partition at once: otherwise the other reply
    /// queues behind the one that waits for it. A reply that was sent more
    /// than `STALE_HOLDS` holds ago does not wait: the orchestrator is
    /// behind, and where the other reply is in its queue nobody knows
    /// (waiting would only take a place from the messages behind).
    pub fn with_reply_hold(mut self, hold: std::time::Duration) -> Self {
        self.reply_hold = hold;
        self
    }

    /// Acts on every saga whose deadline has passed and starts sagas whose
    /// `order-created` message never arrived. Returns how many orders it looked at.
    pub async fn sweep(&self, limit: u32) -> Result<usize, HandleError> {
        let now = Utc::now();
        let due = self.store.due(now, now - self.start_grace, limit).await?;
        // All at once, so the store can write them in few transactions.
        let ticks = due.iter().map(|order_id| async move {
            let (decision, observed) = observed_decision(Input::Tick, self.policy);
            if self.store.transact(*order_id, decision).await? == SagaOutcome::Applied {
                observed.record();
            }
            Ok::<_, HandleError>(())
        });
        futures::future::try_join_all(ticks).await?;
        Ok(due.len())
    }

    /// Forgets expired idempotency keys and trims the saga log of relayed
    /// rows older than `retention` (one bounded batch).
    pub async fn housekeeping(&self, retention: Duration) -> Result<u64, HandleError> {
        let now = Utc::now();
        Ok(self.store.purge(now, now - retention).await?)
    }

    /// The sweeper, until `shutdown`: sweeps every `interval` (again at once
    /// after a full sweep), and runs housekeeping with `retention` at start
    /// and every minute after. A failed pass is logged and tried again.
    pub async fn run_sweeper(
        self: Arc<Self>,
        interval: std::time::Duration,
        retention: Duration,
        shutdown: CancellationToken,
    ) {
        let mut next_housekeeping = tokio::time::Instant::now();
        loop {
            match self.sweep(SWEEP_BATCH).await {
                Ok(n) if n == SWEEP_BATCH as usize => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "deadline sweep failed"),
            }
            if tokio::time::Instant::now() >= next_housekeeping {
                match self.housekeeping(retention).await {
                    Ok(n) if n > 0 => tracing::info!(
                        rows = n,
                        "trimmed the saga log and expired idempotency keys"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
                }
                next_housekeeping += HOUSEKEEPING_EVERY;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn run(
        &self,
        order_id: OrderId,
        message_id: Uuid,
        input: Input,
    ) -> Result<SagaOutcome, HandleError> {
        let (decision, observed) = observed_decision(input, self.policy);
        let outcome = self.store.transact(order_id, decision).await;
        conclude(order_id, message_id, outcome, &observed)
    }

    /// A reply: decided alone, or with its order's other reply when one of
    /// them waits for the other (see `with_reply_hold`).
    async fn reply(&self, order_id: OrderId, reply: Reply) -> Result<SagaOutcome, HandleError> {
        let (message_id, input) = (reply.message_id, Input::Reply(reply));
        if self.reply_hold.is_zero() {
            return self.run(order_id, message_id, input).await;
        }
        let fresh = reply.sent_at.is_some_and(|sent| {
            (reply.received_at - sent)
                .to_std()
                .map_or(true, |age| age <= self.reply_hold * STALE_HOLDS)
        });
        let passed = reply.outcome == StepOutcome::Passed && fresh;
        let (done, joined) = oneshot::channel();
        let me = Partner { reply, done };
        let mut partner = match self.pairing.arrive(order_id, message_id, passed, me) {
            Arrival::Alone => return self.run(order_id, message_id, input).await,
            Arrival::Joined => {
                return joined.await.unwrap_or_else(|_| {
                    Err(HandleError::Unavailable(format!(
                        "order {order_id}: the reply this one was handed to stopped before deciding; handling this one again"
                    )))
                });
            }
            Arrival::Wait(partner) => partner,
        };
        let partner = match tokio::time::timeout(self.reply_hold, &mut partner).await {
            Ok(p) => p.ok(),
            Err(_) if self.pairing.give_up(order_id, message_id) => None,
            // It came just as the wait ended.
            Err(_) => partner.await.ok(),
        };
        let result = if partner.is_some() { "paired" } else { "alone" };
        metrics::counter!(crate::metrics::REPLY_HOLDS, "result" => result).increment(1);
        let Some(partner) = partner else {
            return self.run(order_id, message_id, input).await;
        };
        let (first, first_seen) = observed_decision(input, self.policy);
        let (second, second_seen) = observed_decision(Input::Reply(partner.reply), self.policy);
        let mut outcomes = self
            .store
            .transact_all(order_id, vec![first, second])
            .await
            .into_iter();
        let mut next = || {
            outcomes.next().unwrap_or_else(|| {
                Err(StoreError::Other(anyhow::anyhow!(
                    "the store answered fewer decisions than it was given"
                )))
            })
        };
        let (mine, theirs) = (next(), next());
        let theirs = conclude(order_id, partner.reply.message_id, theirs, &second_seen);
        let _ = partner.done.send(theirs);
        conclude(order_id, message_id, mine, &first_seen)
    }
}

/// What a decision's outcome means to the message that asked for it; the
/// metrics learn of what was applied.
fn conclude(
    order_id: OrderId,
    message_id: Uuid,
    outcome: Result<SagaOutcome, StoreError>,
    observed: &Observed,
) -> Result<SagaOutcome, HandleError> {
    let outcome = outcome?;
    match outcome {
        SagaOutcome::Applied => observed.record(),
        SagaOutcome::UnknownOrder => {
            return Err(HandleError::Poison(format!(
                "order {order_id} does not exist"
            )));
        }
        SagaOutcome::NothingToDo => {
            tracing::debug!(%order_id, %message_id, "message changed nothing (a duplicate, or a reply that no longer matters)");
        }
    }
    Ok(outcome)
}

#[async_trait::async_trait]
impl MessageHandler for Orchestrator {
    async fn handle(&self, message: &InboundMessage) -> Result<(), HandleError> {
        match message.topic {
            Some(Topic::OrdersCreated) => {
                let m = message
                    .decode::<OrderCreated>(MessageType::OrderCreated)
                    .map_err(HandleError::Poison)?;
                self.run(m.payload.order_id, m.message_id, Input::Start)
                    .await?;
            }
            Some(Topic::UserValidationReplies) => {
                let m = message
                    .decode::<UserValidated>(MessageType::UserValidated)
                    .map_err(HandleError::Poison)?;
                let p = &m.payload;
                let reply = Reply {
                    step: Step::User,
                    attempt: p.attempt,
                    outcome: p.outcome(),
                    message_id: m.message_id,
                    received_at: Utc::now(),
                    sent_at: m.sent_at,
                };
                self.reply(p.order_id, reply).await?;
            }
            Some(Topic::BalanceValidationReplies) => {
                let m = message
                    .decode::<BalanceValidated>(MessageType::BalanceValidated)
                    .map_err(HandleError::Poison)?;
                let p = &m.payload;
                let reply = Reply {
                    step: Step::Balance,
                    attempt: p.attempt,
                    outcome: p.outcome(),
                    message_id: m.message_id,
                    received_at: Utc::now(),
                    sent_at: m.sent_at,
                };
                self.reply(p.order_id, reply).await?;
            }
            _ => {
                return Err(HandleError::Poison(format!(
                    "orchestrator does not consume {}",
                    message.topic_name
                )));
            }
        }
        Ok(())
    }
}

/// What a committed decision tells the metrics (see `crate::metrics`).
#[derive(Debug, Default)]
struct Observation {
    /// A step's reply was accepted: which, its outcome, and how long after the saga started.
    reply: Option<(Step, StepOutcome, f64)>,
    /// The order settled: its status, cancel reason, and how long after its creation.
    settled: Option<(OrderStatus, Option<&'static str>, f64)>,
}

#[derive(Clone, Default)]
struct Observed(Arc<std::sync::Mutex<Observation>>);

impl Observed {
    fn record(&self) {
        let o = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some((step, outcome, secs)) = o.reply {
            let outcome = match outcome {
                StepOutcome::Passed => "passed",
                StepOutcome::Failed(_) => "failed",
                StepOutcome::Unavailable => "unavailable",
            };
            let labels = [("step", step.as_str()), ("outcome", outcome)];
            metrics::histogram!(crate::metrics::STEP_DURATION, &labels).record(secs);
        }
        if let Some((status, reason, secs)) = o.settled {
            let labels = [
                ("status", status.to_string()),
                ("reason", reason.unwrap_or("").to_owned()),
            ];
            metrics::counter!(crate::metrics::ORDERS_SETTLED, &labels).increment(1);
            metrics::histogram!(crate::metrics::SAGA_DURATION, "status" => status.to_string())
                .record(secs);
        }
    }
}

/// The decision for `input`, and where it leaves what the metrics should
/// learn once the transaction has committed.
fn observed_decision(input: Input, policy: SagaPolicy) -> (SagaDecision, Observed) {
    let observed = Observed::default();
    let sink = observed.clone();
    let decision: SagaDecision = Box::new(move |ctx| {
        let now = match input {
            Input::Reply(reply) => reply.received_at,
            Input::Start | Input::Tick => Utc::now(),
        };
        let write = decide(ctx, input, &policy, now)?;
        let mut o = sink.0.lock().unwrap_or_else(|e| e.into_inner());
        let secs =
            |since: DateTime<Utc>| (now - since).num_microseconds().unwrap_or(0) as f64 / 1e6;
        if let (Input::Reply(Reply { step, outcome, .. }), Some(saga)) = (input, &ctx.saga)
            && write
                .events()
                .any(|e| e.kind == SagaEventKind::ReplyReceived)
        {
            o.reply = Some((step, outcome, secs(saga.started_at)));
        }
        if let Some(s) = write.settle {
            o.settled = Some((
                s.status(),
                s.cancel_reason().map(|r| r.as_str()),
                secs(ctx.order.created_at),
            ));
        }
        Some(write)
    });
    (decision, observed)
}

/// The decision: runs the state machine on the locked saga and turns its
/// effects into the rows to write. Pure but for fresh ids.
fn decide(
    ctx: &SagaContext,
    input: Input,
    policy: &SagaPolicy,
    now: DateTime<Utc>,
) -> Option<SagaWrite> {
    let order = &ctx.order;
    let (saga, effects) = match (ctx.saga.clone(), input) {
        (None, Input::Start | Input::Tick) => {
            if order.status.is_terminal() {
                return None;
            }
            Saga::start(now, policy)
        }
        (None, Input::Reply(_)) => {
            tracing::warn!(order_id = %order.id, "reply for an order whose saga never started; ignored");
            return None;
        }
        (Some(_), Input::Start) => return None,
        (
            Some(mut saga),
            Input::Reply(Reply {
                step,
                attempt,
                outcome,
                ..
            }),
        ) => {
            let effects = saga.on_reply(step, attempt, outcome, now, policy);
            (saga, effects)
        }
        (Some(mut saga), Input::Tick) => {
            let effects = saga.on_tick(now, policy);
            (saga, effects)
        }
    };
    if effects.is_empty() {
        return None;
    }

    let mut write = SagaWrite {
        saga,
        settle: None,
        entries: Vec::new(),
    };
    let event = |kind, payload| NewEvent::new(order.id, kind, payload, now);
    for effect in effects {
        match effect {
            Effect::SendCommand { step, attempt } => {
                let message = command(ctx, step, attempt);
                let sent = event(
                    SagaEventKind::CommandSent,
                    json!({
                        "step": step,
                        "attempt": attempt,
                        "message_id": message.message_id,
                        "message_type": message.message_type,
                        "topic": message.topic.name(),
                    }),
                );
                write.entries.push(LogEntry::with_message(sent, message));
            }
            Effect::ReplyAccepted {
                step,
                attempt,
                outcome,
            } => {
                let message_id = match input {
                    Input::Reply(reply) => Some(reply.message_id),
                    _ => None,
                };
                write.entries.push(LogEntry::event(event(
                    SagaEventKind::ReplyReceived,
                    json!({ "step": step, "attempt": attempt, "outcome": outcome, "message_id": message_id }),
                )));
            }
            Effect::TimedOut { step, attempt } => {
                write.entries.push(LogEntry::event(event(
                    SagaEventKind::StepTimedOut,
                    json!({ "step": step, "attempt": attempt }),
                )));
            }
            Effect::Settle(settlement) => {
                if !order.status.can_become(settlement.status()) {
                    tracing::warn!(order_id = %order.id, status = %order.status, to = %settlement.status(), "the saga would settle an order its status rule does not let move; nothing written");
                    return None;
                }
                write.settle = Some(settlement);
                let changed = event(
                    SagaEventKind::StatusChanged,
                    json!({
                        "from": order.status,
                        "to": settlement.status(),
                        "cancel_reason": settlement.cancel_reason(),
                    }),
                );
                let settled = OrderSettled {
                    order_id: order.id,
                    user_id: order.user_id.clone(),
                    value: order.value,
                    status: settlement.status(),
                    cancel_reason: settlement.cancel_reason(),
                    settled_at: now,
                };
                let message = OutboundMessage::new(
                    Uuid::new_v4(),
                    Topic::OrdersSettled,
                    order.id,
                    MessageType::OrderSettled,
                    &ctx.correlation_id,
                    &settled,
                );
                write.entries.push(LogEntry::with_message(changed, message));
            }
        }
    }
    Some(write)
}

fn command(ctx: &SagaContext, step: Step, attempt: u32) -> OutboundMessage {
    let order = &ctx.order;
    let id = Uuid::new_v4();
    match step {
        Step::User => OutboundMessage::new(
            id,
            Topic::UserValidationCommands,
            order.id,
            MessageType::ValidateUser,
            &ctx.correlation_id,
            &ValidateUser {
                order_id: order.id,
                user_id: order.user_id.clone(),
                attempt,
            },
        ),
        Step::Balance => OutboundMessage::new(
            id,
            Topic::BalanceValidationCommands,
            order.id,
            MessageType::ValidateBalance,
            &ctx.correlation_id,
            &ValidateBalance {
                order_id: order.id,
                value: order.value,
                attempt,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;
    use crate::application::ports::StoreError;
    use crate::domain::{CancelReason, NewOrder, Order, Settlement};

    /// A reply to the first attempt at `step`, sent and received now.
    fn reply(step: Step, outcome: StepOutcome) -> Reply {
        Reply {
            step,
            attempt: 1,
            outcome,
            message_id: Uuid::new_v4(),
            received_at: Utc::now(),
            sent_at: Some(Utc::now()),
        }
    }

    fn ctx(saga: Option<Saga>) -> SagaContext {
        let new = NewOrder::parse(Some("10.00"), Some("u1"), Some("1"), Some("cash")).unwrap();
        SagaContext {
            order: Order::place(OrderId::new(), new, Utc::now()),
            correlation_id: "c1".into(),
            saga,
        }
    }

    #[test]
    fn start_logs_two_commands_with_their_messages() {
        let w = decide(&ctx(None), Input::Start, &SagaPolicy::default(), Utc::now()).unwrap();
        let topics: Vec<_> = w.messages().map(|m| m.topic).collect();
        assert_eq!(
            topics,
            [
                Topic::UserValidationCommands,
                Topic::BalanceValidationCommands
            ]
        );
        assert!(w.messages().all(|m| m.correlation_id == "c1"));
        let kinds: Vec<_> = w.events().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [SagaEventKind::CommandSent, SagaEventKind::CommandSent]
        );
        assert_eq!(w.settle, None);
    }

    #[test]
    fn start_on_a_started_saga_writes_nothing() {
        let (saga, _) = Saga::start(Utc::now(), &SagaPolicy::default());
        assert!(
            decide(
                &ctx(Some(saga)),
                Input::Start,
                &SagaPolicy::default(),
                Utc::now()
            )
            .is_none()
        );
    }

    #[test]
    fn a_failing_reply_settles_with_a_settled_message_and_event() {
        let p = SagaPolicy::default();
        let (saga, _) = Saga::start(Utc::now(), &p);
        let input = Input::Reply(reply(
            Step::User,
            StepOutcome::Failed(CancelReason::UserInvalid),
        ));
        let w = decide(&ctx(Some(saga)), input, &p, Utc::now()).unwrap();
        assert_eq!(
            w.settle,
            Some(Settlement::Canceled(CancelReason::UserInvalid))
        );
        let messages: Vec<_> = w.messages().collect();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].topic, Topic::OrdersSettled);
        assert_eq!(messages[0].payload["status"], "CANCELED");
        assert_eq!(messages[0].payload["cancel_reason"], "USER_INVALID");
        // The settlement message rides on the status_changed event's entry.
        let carried: Vec<_> = w
            .entries
            .iter()
            .filter(|e| e.message.is_some())
            .map(|e| e.event.kind)
            .collect();
        assert_eq!(carried, [SagaEventKind::StatusChanged]);
        let kinds: Vec<_> = w.events().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [SagaEventKind::ReplyReceived, SagaEventKind::StatusChanged]
        );
    }

    #[test]
    fn a_settlement_the_status_rule_forbids_writes_nothing() {
        let p = SagaPolicy::default();
        let (saga, _) = Saga::start(Utc::now(), &p);
        let mut c = ctx(Some(saga));
        c.order.status = OrderStatus::Approved;
        let input = Input::Reply(reply(
            Step::User,
            StepOutcome::Failed(CancelReason::UserInvalid),
        ));
        assert!(decide(&c, input, &p, Utc::now()).is_none());
    }

    #[test]
    fn a_reply_without_a_saga_is_ignored() {
        let input = Input::Reply(reply(Step::User, StepOutcome::Passed));
        assert!(decide(&ctx(None), input, &SagaPolicy::default(), Utc::now()).is_none());
    }

    #[test]
    fn a_tick_starts_an_orphaned_processing_order() {
        let w = decide(&ctx(None), Input::Tick, &SagaPolicy::default(), Utc::now()).unwrap();
        assert_eq!(w.messages().count(), 2);
    }

    /// The whole saga on the in-memory ports: the order's entry, the
    /// orchestrator, both validators and their replies.
    #[tokio::test]
    async fn an_order_settles_on_the_in_memory_ports_and_redeliveries_change_nothing() {
        use crate::application::orders::OrderService;
        use crate::application::ports::fakes::{
            MemoryBroker, MemoryDirectory, MemoryEvents, MemoryStore,
        };
        let delivered = |m: &OutboundMessage| InboundMessage::from(m);
        use crate::application::validators::{BalanceValidator, UserValidator};
        use crate::domain::Money;

        let store = Arc::new(MemoryStore::default());
        let broker = Arc::new(MemoryBroker::default());
        let orders = OrderService::new(
            store.clone(),
            Arc::new(MemoryEvents::default()),
            Duration::hours(1),
        );
        let new = NewOrder::parse(Some("10.00"), Some("u1"), Some("1"), Some("cash")).unwrap();
        let placed = orders.place(new, "c1", None).await.unwrap();
        let orchestrator =
            Orchestrator::new(store.clone(), SagaPolicy::default(), Duration::seconds(5));
        let created = delivered(store.log()[0].message.as_ref().unwrap());
        orchestrator.handle(&created).await.unwrap();
        orchestrator.handle(&created).await.unwrap();
        let commands: Vec<OutboundMessage> = store
            .log()
            .iter()
            .filter_map(|e| e.message.clone())
            .filter(|m| m.topic != Topic::OrdersCreated)
            .collect();
        assert_eq!(commands.len(), 2, "one start, however often delivered");

        let users = UserValidator::new(Arc::new(MemoryDirectory), broker.clone());
        let balance = BalanceValidator::new(Money::parse("1000").unwrap(), broker.clone());
        users.handle(&delivered(&commands[0])).await.unwrap();
        balance.handle(&delivered(&commands[1])).await.unwrap();
        let replies = broker.sent.lock().unwrap().clone();
        assert_eq!(replies.len(), 2);
        for reply in replies.iter().chain(&replies) {
            orchestrator.handle(&delivered(reply)).await.unwrap();
        }

        let (order, _) = store.order(placed.order.id).unwrap();
        assert_eq!(order.status, OrderStatus::Approved);
        let kinds: Vec<_> = store.log().iter().map(|e| e.event.kind).collect();
        assert_eq!(
            kinds,
            [
                SagaEventKind::OrderCreated,
                SagaEventKind::CommandSent,
                SagaEventKind::CommandSent,
                SagaEventKind::ReplyReceived,
                SagaEventKind::ReplyReceived,
                SagaEventKind::StatusChanged,
            ]
        );
    }

    /// An orchestrator with a reply hold, on in-memory ports.
    struct Held {
        store: Arc<crate::application::ports::fakes::MemoryStore>,
        orders: crate::application::orders::OrderService,
        orchestrator: Orchestrator,
    }

    impl Held {
        fn new(hold: std::time::Duration) -> Self {
            use crate::application::ports::fakes::{MemoryEvents, MemoryStore};
            let store = Arc::new(MemoryStore::default());
            let orders = crate::application::orders::OrderService::new(
                store.clone(),
                Arc::new(MemoryEvents::default()),
                Duration::hours(1),
            );
            let orchestrator =
                Orchestrator::new(store.clone(), SagaPolicy::default(), Duration::seconds(5))
                    .with_reply_hold(hold);
            Self {
                store,
                orders,
                orchestrator,
            }
        }

        /// A new order whose saga has started.
        async fn started_order(&self) -> OrderId {
            let new = NewOrder::parse(Some("10.00"), Some("u1"), Some("1"), Some("cash")).unwrap();
            let id = self.orders.place(new, "c1", None).await.unwrap().order.id;
            let start = self.orchestrator.run(id, Uuid::new_v4(), Input::Start);
            start.await.unwrap();
            id
        }

        /// A reply to the order's first attempt at `step`, sent at `sent`.
        async fn reply(
            &self,
            id: OrderId,
            step: Step,
            outcome: StepOutcome,
            sent: DateTime<Utc>,
        ) -> Result<SagaOutcome, HandleError> {
            let reply = Reply {
                sent_at: Some(sent),
                ..reply(step, outcome)
            };
            self.orchestrator.reply(id, reply).await
        }

        fn status(&self, id: OrderId) -> OrderStatus {
            self.store.order(id).unwrap().0.status
        }
    }

    /// Both replies of an order, the first waiting for the second: one
    /// transaction decides both, and each message learns its own outcome.
    #[tokio::test]
    async fn a_passing_reply_waits_for_the_other_and_both_are_decided_together() {
        let held = Held::new(std::time::Duration::from_secs(30));
        let now = Utc::now();

        // Both pass: the first waits (however long the hold), the second joins it.
        let id = held.started_order().await;
        let before = held.store.transactions();
        let (user, balance) = tokio::join!(
            held.reply(id, Step::User, StepOutcome::Passed, now),
            held.reply(id, Step::Balance, StepOutcome::Passed, now),
        );
        assert_eq!(
            (user.unwrap(), balance.unwrap()),
            (SagaOutcome::Applied, SagaOutcome::Applied)
        );
        assert_eq!(
            held.store.transactions() - before,
            1,
            "one transaction for both"
        );
        assert_eq!(held.status(id), OrderStatus::Approved);

        // A failed reply may settle the order: it never waits.
        let id = held.started_order().await;
        let before = held.store.transactions();
        let failed = StepOutcome::Failed(CancelReason::UserInvalid);
        let outcome = held.reply(id, Step::User, failed, now).await;
        assert_eq!(outcome.unwrap(), SagaOutcome::Applied);
        assert_eq!(held.store.transactions() - before, 1);
        assert_eq!(held.status(id), OrderStatus::Canceled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_whose_partner_does_not_come_goes_alone_after_the_hold() {
        let hold = std::time::Duration::from_millis(10);
        let held = Held::new(hold);
        let passed = StepOutcome::Passed;
        let id = held.started_order().await;

        let started = tokio::time::Instant::now();
        let first = held.reply(id, Step::User, passed, Utc::now()).await;
        assert_eq!(first.unwrap(), SagaOutcome::Applied);
        assert_eq!(started.elapsed(), hold, "it waited the hold, no more");
        // The other reply, late, goes at once: its partner is gone.
        let started = tokio::time::Instant::now();
        let second = held.reply(id, Step::Balance, passed, Utc::now()).await;
        assert_eq!(second.unwrap(), SagaOutcome::Applied);
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
        assert_eq!(held.status(id), OrderStatus::Approved);

        // A reply sent long before it is handled (the orchestrator is behind) does not wait.
        let id = held.started_order().await;
        let started = tokio::time::Instant::now();
        let sent = Utc::now() - Duration::seconds(1);
        held.reply(id, Step::User, passed, sent).await.unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    }

    /// A saga store that only counts: `due` hands out `backlog` orders, at
    /// most `limit` at a time, and nothing is ever left to do.
    #[derive(Default)]
    struct Counting {
        backlog: std::sync::Mutex<usize>,
        sweeps: AtomicUsize,
        purges: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SagaStore for Counting {
        async fn transact(&self, _: OrderId, _: SagaDecision) -> Result<SagaOutcome, StoreError> {
            Ok(SagaOutcome::NothingToDo)
        }

        async fn due(
            &self,
            _: DateTime<Utc>,
            _: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<OrderId>, StoreError> {
            self.sweeps.fetch_add(1, SeqCst);
            let mut backlog = self.backlog.lock().unwrap();
            let n = (*backlog).min(limit as usize);
            *backlog -= n;
            Ok((0..n).map(|_| OrderId::new()).collect())
        }

        async fn purge(&self, _: DateTime<Utc>, _: DateTime<Utc>) -> Result<u64, StoreError> {
            self.purges.fetch_add(1, SeqCst);
            Ok(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_clears_a_backlog_at_once_and_keeps_house_every_minute() {
        let store = Arc::new(Counting {
            backlog: 250.into(),
            ..Counting::default()
        });
        let orchestrator = Arc::new(Orchestrator::new(
            store.clone(),
            SagaPolicy::default(),
            Duration::seconds(5),
        ));
        let shutdown = CancellationToken::new();
        let second = std::time::Duration::from_secs(1);
        let sweeper =
            tokio::spawn(orchestrator.run_sweeper(second, Duration::days(7), shutdown.clone()));
        tokio::time::sleep(second / 2).await;
        // 100, 100 and 50 orders without a pause; housekeeping once at start.
        assert_eq!(store.sweeps.load(SeqCst), 3);
        assert_eq!(store.purges.load(SeqCst), 1);
        tokio::time::sleep(60 * second).await;
        assert_eq!(store.sweeps.load(SeqCst), 3 + 60);
        assert_eq!(store.purges.load(SeqCst), 2);
        shutdown.cancel();
        sweeper.await.unwrap();
    }
}
