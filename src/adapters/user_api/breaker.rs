//! A circuit breaker for the user API: after `threshold` failed lookups in a
//! row it opens and fails fast for `cooldown`, sparing a struggling API and
//! the validator's time; then one trial lookup is let through (half-open),
//! which closes the circuit on success or opens it again on failure.
//!
//! `acquire` hands out a [`Permit`]: the call's outcome is recorded through
//! it, and a permit dropped without an outcome (its future was dropped: a
//! timeout or a shutdown cancelled the call) counts as a failure, so a
//! cancelled trial call can never leave the circuit half-open for good.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A trial call is out; others fail fast until it returns.
    HalfOpen,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open;

/// Leave for one call to go out. Record its outcome with [`Permit::record`];
/// dropped without one, it records a failure.
#[derive(Debug)]
#[must_use = "a permit dropped at once records a failure"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    acquired_at: Instant,
    recorded: bool,
}

impl Permit<'_> {
    /// Records how the call went.
    pub fn record(mut self, success: bool, now: Instant) {
        self.recorded = true;
        self.breaker.record(success, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            tracing::debug!("user API call dropped before its outcome; counted as a failure");
            self.breaker
                .record(false, Instant::now().max(self.acquired_at));
        }
    }
}

impl CircuitBreaker {
    /// `threshold` 0 disables the breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// May a call go out now? The permit records its outcome.
    pub fn acquire(&self, now: Instant) -> Result<Permit<'_>, Open> {
        self.allow(now)?;
        Ok(Permit {
            breaker: self,
            acquired_at: now,
            recorded: false,
        })
    }

    fn allow(&self, now: Instant) -> Result<(), Open> {
        if self.threshold == 0 {
            return Ok(());
        }
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                *state = State::HalfOpen;
                Ok(())
            }
            State::Open { .. } | State::HalfOpen => Err(Open),
        }
    }

    /// Records how an allowed call went (through its permit).
    fn record(&self, success: bool, now: Instant) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.state.lock().expect("breaker lock");
        *state = match (*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::HalfOpen, false) => State::Open {
                until: now + self.cooldown,
            },
            (State::Closed { failures }, false) if failures + 1 >= self.threshold => {
                tracing::warn!(
                    failures = failures + 1,
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "user API circuit opened"
                );
                State::Open {
                    until: now + self.cooldown,
                }
            }
            (State::Closed { failures }, false) => State::Closed {
                failures: failures + 1,
            },
            (open @ State::Open { .. }, false) => open,
        };
    }

    pub fn is_open(&self, now: Instant) -> bool {
        matches!(*self.state.lock().expect("breaker lock"), State::Open { until } if now < until)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    /// One call that fails.
    fn fail(b: &CircuitBreaker, t: Instant) {
        b.acquire(t).expect("the call may go").record(false, t);
    }

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let b = CircuitBreaker::new(3, COOLDOWN);
        let t = Instant::now();
        fail(&b, t);
        fail(&b, t);
        assert!(!b.is_open(t));
        fail(&b, t);
        assert!(b.is_open(t));
        assert_eq!(b.acquire(t + Duration::from_secs(9)).err(), Some(Open));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = CircuitBreaker::new(3, COOLDOWN);
        let t = Instant::now();
        fail(&b, t);
        fail(&b, t);
        b.acquire(t).unwrap().record(true, t);
        fail(&b, t);
        fail(&b, t);
        assert!(!b.is_open(t));
    }

    #[test]
    fn after_the_cooldown_one_trial_goes_out() {
        let b = CircuitBreaker::new(1, COOLDOWN);
        let t = Instant::now();
        fail(&b, t);
        let later = t + COOLDOWN;
        let trial = b.acquire(later).expect("the trial call");
        assert_eq!(
            b.acquire(later).err(),
            Some(Open),
            "only one trial at a time"
        );
        trial.record(true, later);
        assert!(b.acquire(later).is_ok(), "closed again");
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let b = CircuitBreaker::new(1, COOLDOWN);
        let t = Instant::now();
        fail(&b, t);
        let later = t + COOLDOWN;
        fail(&b, later);
        assert_eq!(b.acquire(later + Duration::from_secs(1)).err(), Some(Open));
        assert!(b.acquire(later + COOLDOWN).is_ok());
    }

    #[test]
    fn a_dropped_half_open_trial_counts_as_a_failure_and_does_not_leave_it_stuck() {
        let b = CircuitBreaker::new(1, COOLDOWN);
        let t = Instant::now();
        fail(&b, t);
        let later = t + COOLDOWN;
        // The trial call's future: it takes its permit, then waits for an
        // answer that never comes, and is dropped (a timeout or a shutdown
        // cancels it) before it can record anything.
        {
            let mut call = pin!(async {
                let permit = b.acquire(later).expect("the trial call");
                std::future::pending::<()>().await;
                permit.record(true, later);
            });
            let mut cx = Context::from_waker(Waker::noop());
            assert!(call.as_mut().poll(&mut cx).is_pending());
            assert_eq!(
                b.acquire(later).err(),
                Some(Open),
                "the trial is out: others fail fast"
            );
        }
        // The dropped trial failed: open again, for one more cooldown...
        assert!(b.is_open(later), "the dropped trial reopened the circuit");
        assert_eq!(b.acquire(later + Duration::from_secs(1)).err(), Some(Open));
        // ...after which a new trial goes out and can close it.
        let trial = b
            .acquire(later + COOLDOWN)
            .expect("not stuck half-open: a new trial goes out");
        trial.record(true, later + COOLDOWN);
        assert!(b.acquire(later + COOLDOWN).is_ok(), "closed again");
    }

    #[test]
    fn a_dropped_call_counts_as_a_failure_while_closed() {
        let b = CircuitBreaker::new(2, COOLDOWN);
        let t = Instant::now();
        drop(b.acquire(t).unwrap());
        assert!(!b.is_open(t));
        drop(b.acquire(t).unwrap());
        assert!(b.is_open(t), "two dropped calls in a row open it");
    }

    #[test]
    fn threshold_zero_disables_it() {
        let b = CircuitBreaker::new(0, COOLDOWN);
        let t = Instant::now();
        for _ in 0..10 {
            fail(&b, t);
        }
        drop(b.acquire(t).unwrap());
        assert!(b.acquire(t).is_ok());
    }
}
