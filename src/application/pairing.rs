//! Pairs an order's two validation replies, so the orchestrator can write
//! them in one transaction (one update of the order instead of two).
//!
//! A reply that passed its step arrives first and waits a moment (the
//! orchestrator's reply hold) for the order's other reply; when that one
//! arrives meanwhile, it is handed to the waiting one and both are decided
//! together. Waiting never delays a settlement: an order settles on its last
//! reply, and the pair is written as soon as that one arrives. Replies that
//! would not gain from waiting go at once: one that failed or could not be
//! checked (it may settle the order), a redelivery of the reply waiting, and
//! the reply of an order whose first reply has already gone alone (its other
//! step answered long ago).
//!
//! All in memory and per process: a missed pair (a restart, the replies
//! consumed by two processes) costs one more write, nothing else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain::OrderId;

/// How long an order whose first reply went alone is remembered: its other
/// reply then goes at once instead of waiting for a partner that has gone.
const REMEMBER_ALONE: Duration = Duration::from_secs(30);
/// Remembered orders past which the old ones are forgotten.
const REMEMBER_MAX: usize = 16_384;

/// What became of an arriving reply.
#[derive(Debug)]
pub(super) enum Arrival<P> {
    /// The first of its order: wait for a partner on this, then call
    /// [`Pairing::give_up`] if none came in time.
    Wait(oneshot::Receiver<P>),
    /// Handed to the reply that was waiting for it, which decides both.
    Joined,
    /// Nothing to pair with: decide it alone, now.
    Alone,
}

/// The replies waiting for their partner, by order.
pub(super) struct Pairing<P> {
    state: Mutex<State<P>>,
}

struct State<P> {
    waiting: HashMap<OrderId, (Uuid, oneshot::Sender<P>)>,
    /// Orders whose first reply gave up waiting, and when.
    alone: HashMap<OrderId, Instant>,
}

impl<P> Default for Pairing<P> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                alone: HashMap::new(),
            }),
        }
    }
}

impl<P> Pairing<P> {
    /// A reply `message_id` for `order` arrives, as `partner` (what a waiting
    /// reply gets if this one joins it). `may_wait`: this reply could be
    /// the first of a pair (it passed its step).
    pub(super) fn arrive(
        &self,
        order: OrderId,
        message_id: Uuid,
        may_wait: bool,
        partner: P,
    ) -> Arrival<P> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.waiting.remove(&order) {
            Some((waiting, tx)) if waiting != message_id => {
                return match tx.send(partner) {
                    Ok(()) => Arrival::Joined,
                    Err(_) => Arrival::Alone, // the waiting reply's handler is gone
                };
            }
            Some(same) => {
                // A redelivery of the reply that waits: it goes alone (and
                // changes nothing), the original keeps waiting.
                state.waiting.insert(order, same);
                return Arrival::Alone;
            }
            None => {}
        }
        if !may_wait || state.alone.contains_key(&order) {
            return Arrival::Alone;
        }
        if state.waiting.len() >= REMEMBER_MAX {
            // Handlers that were dropped while waiting leave their entry.
            state.waiting.retain(|_, (_, tx)| !tx.is_closed());
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.insert(order, (message_id, tx));
        Arrival::Wait(rx)
    }

    /// No partner came for the reply `message_id` of `order` in time: true
    /// when it is to go alone (and its order's next reply will not wait);
    /// false when a partner joined it just now (it is in the receiver).
    pub(super) fn give_up(&self, order: OrderId, message_id: Uuid) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.waiting.get(&order) {
            Some((waiting, _)) if *waiting == message_id => {
                state.waiting.remove(&order);
                if state.alone.len() >= REMEMBER_MAX {
                    state.alone.retain(|_, at| at.elapsed() < REMEMBER_ALONE);
                    if state.alone.len() >= REMEMBER_MAX {
                        state.alone.clear();
                    }
                }
                state.alone.insert(order, Instant::now());
                true
            }
            _ => false,
        }
    }

    /// Replies waiting now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_reply_is_handed_to_the_first() {
        let pairing = Pairing::default();
        let order = OrderId::new();
        let Arrival::Wait(mut rx) = pairing.arrive(order, Uuid::new_v4(), true, "first") else {
            panic!("the first reply waits");
        };
        assert!(matches!(
            pairing.arrive(order, Uuid::new_v4(), false, "second"),
            Arrival::Joined
        ));
        assert_eq!(rx.try_recv().unwrap(), "second");
        assert_eq!(pairing.waiting(), 0);
    }

    #[test]
    fn a_reply_that_may_settle_the_order_goes_at_once() {
        let pairing = Pairing::default();
        assert!(matches!(
            pairing.arrive(OrderId::new(), Uuid::new_v4(), false, ()),
            Arrival::Alone
        ));
        assert_eq!(pairing.waiting(), 0);
    }

    #[test]
    fn after_a_first_reply_went_alone_the_other_does_not_wait() {
        let pairing = Pairing::default();
        let (order, first) = (OrderId::new(), Uuid::new_v4());
        let Arrival::Wait(_rx) = pairing.arrive(order, first, true, ()) else {
            panic!("the first reply waits");
        };
        assert!(pairing.give_up(order, first));
        assert!(matches!(
            pairing.arrive(order, Uuid::new_v4(), true, ()),
            Arrival::Alone
        ));
    }

    #[test]
    fn a_partner_that_joined_before_the_give_up_is_not_lost() {
        let pairing = Pairing::default();
        let (order, first) = (OrderId::new(), Uuid::new_v4());
        let Arrival::Wait(mut rx) = pairing.arrive(order, first, true, 0) else {
            panic!("the first reply waits");
        };
        assert!(matches!(
            pairing.arrive(order, Uuid::new_v4(), true, 2),
            Arrival::Joined
        ));
        assert!(!pairing.give_up(order, first), "too late to give up");
        assert_eq!(rx.try_recv().unwrap(), 2);
    }

    #[test]
    fn a_redelivery_of_the_waiting_reply_goes_alone_and_the_first_keeps_waiting() {
        let pairing = Pairing::default();
        let (order, first) = (OrderId::new(), Uuid::new_v4());
        let Arrival::Wait(mut rx) = pairing.arrive(order, first, true, 0) else {
            panic!("the first reply waits");
        };
        assert!(matches!(
            pairing.arrive(order, first, true, 1),
            Arrival::Alone
        ));
        assert!(matches!(
            pairing.arrive(order, Uuid::new_v4(), true, 2),
            Arrival::Joined
        ));
        assert_eq!(rx.try_recv().unwrap(), 2);
    }

    #[test]
    fn a_waiting_reply_whose_handler_went_away_pairs_with_nothing() {
        let pairing = Pairing::default();
        let order = OrderId::new();
        let Arrival::Wait(rx) = pairing.arrive(order, Uuid::new_v4(), true, 0) else {
            panic!("the first reply waits");
        };
        drop(rx);
        assert!(matches!(
            pairing.arrive(order, Uuid::new_v4(), true, 1),
            Arrival::Alone
        ));
    }
}
