//! A circuit breaker for the user API: after `threshold` failed lookups in a
//! row it opens and fails fast for `cooldown`, sparing a struggling API and
//! the validator's time; then one trial lookup is let through (half-open),
//! which closes the circuit on success or opens it again on failure.

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

impl CircuitBreaker {
    /// `threshold` 0 disables the breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// May a call go out now?
    pub fn acquire(&self, now: Instant) -> Result<(), Open> {
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

    /// Records how an allowed call went.
    pub fn record(&self, success: bool, now: Instant) {
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
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let b = CircuitBreaker::new(3, COOLDOWN);
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.acquire(t), Ok(()));
            b.record(false, t);
        }
        assert!(!b.is_open(t));
        b.record(false, t);
        assert!(b.is_open(t));
        assert_eq!(b.acquire(t + Duration::from_secs(9)), Err(Open));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = CircuitBreaker::new(3, COOLDOWN);
        let t = Instant::now();
        b.record(false, t);
        b.record(false, t);
        b.record(true, t);
        b.record(false, t);
        b.record(false, t);
        assert!(!b.is_open(t));
    }

    #[test]
    fn after_the_cooldown_one_trial_goes_out() {
        let b = CircuitBreaker::new(1, COOLDOWN);
        let t = Instant::now();
        b.record(false, t);
        let later = t + COOLDOWN;
        assert_eq!(b.acquire(later), Ok(()), "the trial call");
        assert_eq!(b.acquire(later), Err(Open), "only one trial at a time");
        b.record(true, later);
        assert_eq!(b.acquire(later), Ok(()), "closed again");
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let b = CircuitBreaker::new(1, COOLDOWN);
        let t = Instant::now();
        b.record(false, t);
        let later = t + COOLDOWN;
        b.acquire(later).unwrap();
        b.record(false, later);
        assert_eq!(b.acquire(later + Duration::from_secs(1)), Err(Open));
        assert_eq!(b.acquire(later + COOLDOWN), Ok(()));
    }

    #[test]
    fn threshold_zero_disables_it() {
        let b = CircuitBreaker::new(0, COOLDOWN);
        let t = Instant::now();
        for _ in 0..10 {
            b.record(false, t);
        }
        assert_eq!(b.acquire(t), Ok(()));
    }
}
