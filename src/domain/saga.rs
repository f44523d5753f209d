//! The order-validation saga as a pure state machine.
//!
//! A saga runs two validation steps at once, `user` and `balance`. Each step
//! sends a command and waits for a reply until a deadline; a missing reply is
//! retried with a growing deadline, a bounded number of times. The saga settles
//! the order as soon as the outcome is known: both steps passed → approved; the
//! first step to fail → canceled with that step's reason. Once settled, nothing
//! changes it again: late or duplicate replies and ticks produce no effects.
//!
//! The machine never reads a clock or does I/O: callers pass `now` and carry
//! out the returned [`Effect`]s (send a command, log an event, update the order).

use chrono::{DateTime, Duration, Utc};

use super::order::{CancelReason, OrderStatus};

/// One of the two validations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    User,
    Balance,
}

impl Step {
    pub const ALL: [Step; 2] = [Step::User, Step::Balance];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::User => "user",
            Step::Balance => "balance",
        }
    }
}

/// What a validator answered for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "reason")]
pub enum StepOutcome {
    Passed,
    Failed(CancelReason),
    /// The validator could not decide (its dependency is down).
    Unavailable,
}

/// What the saga does when a validator answers "unavailable".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailablePolicy {
    /// Cancel the order at once with `USER_API_UNAVAILABLE`.
    Cancel,
    /// Ask again after `retry_delay` until the saga deadline, then cancel with `USER_API_UNAVAILABLE`.
    Wait,
}

/// Timing rules of a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaPolicy {
    /// How long the first attempt of a step waits for its reply.
    pub step_timeout: Duration,
    /// Attempts per step (the first one included) before the step times out for good.
    pub max_attempts: u32,
    /// Each retry waits this many times longer than the attempt before it.
    pub backoff_factor: u32,
    /// Delay before asking again after an "unavailable" answer (wait policy).
    pub retry_delay: Duration,
    /// Longest a saga may run under the wait policy before it gives up.
    pub saga_deadline: Duration,
    pub on_unavailable: UnavailablePolicy,
}

impl Default for SagaPolicy {
    fn default() -> Self {
        Self {
            step_timeout: Duration::seconds(5),
            max_attempts: 3,
            backoff_factor: 2,
            retry_delay: Duration::seconds(1),
            saga_deadline: Duration::seconds(60),
            on_unavailable: UnavailablePolicy::Cancel,
        }
    }
}

impl SagaPolicy {
    /// With the wait policy: the pause before asking again after the
    /// "unavailable" answer to attempt `attempt`; doubles per attempt, up to 16×.
    pub fn wait_delay(&self, attempt: u32) -> Duration {
        let factor = 1i32 << attempt.saturating_sub(1).min(4);
        self.retry_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
    }

    /// How long attempt `attempt` (1-based) waits for its reply.
    pub fn timeout_for(&self, attempt: u32) -> Duration {
        let factor = i32::try_from(
            self.backoff_factor
                .max(1)
                .saturating_pow(attempt.saturating_sub(1)),
        )
        .unwrap_or(i32::MAX);
        self.step_timeout
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
    }
}

/// Where one step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum StepState {
    /// Command `attempt` is out; act at `deadline` if no reply came.
    Awaiting {
        attempt: u32,
        deadline: DateTime<Utc>,
        /// The last answer was "unavailable": at the deadline ask again rather than count a timeout.
        #[serde(default)]
        retry_unavailable: bool,
        /// Attempts of this step that got no reply in time (asking again after
        /// "unavailable" answers does not count: only silence uses up attempts).
        #[serde(default)]
        timeouts: u32,
    },
    Done {
        outcome: StepOutcome,
    },
}

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Settlement {
    Approved,
    Canceled(CancelReason),
}

impl Settlement {
    pub fn status(self) -> OrderStatus {
        match self {
            Settlement::Approved => OrderStatus::Approved,
            Settlement::Canceled(_) => OrderStatus::Canceled,
        }
    }

    pub fn cancel_reason(self) -> Option<CancelReason> {
        match self {
            Settlement::Approved => None,
            Settlement::Canceled(r) => Some(r),
        }
    }
}

/// Something the caller must carry out, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Send the step's command, attempt `attempt` (1 is the first send).
    SendCommand { step: Step, attempt: u32 },
    /// A reply was taken into account.
    ReplyAccepted {
        step: Step,
        attempt: u32,
        outcome: StepOutcome,
    },
    /// Attempt `attempt` got no reply within its deadline.
    TimedOut { step: Step, attempt: u32 },
    /// Settle the order. Emitted once per saga.
    Settle(Settlement),
}

/// The saga of one order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saga {
    pub started_at: DateTime<Utc>,
    pub user: StepState,
    pub balance: StepState,
    pub settlement: Option<Settlement>,
}

impl Saga {
    /// Starts a saga: both commands go out at once.
    pub fn start(now: DateTime<Utc>, policy: &SagaPolicy) -> (Saga, Vec<Effect>) {
        let awaiting = StepState::Awaiting {
            attempt: 1,
            deadline: now + policy.timeout_for(1),
            retry_unavailable: false,
            timeouts: 0,
        };
        let saga = Saga {
            started_at: now,
            user: awaiting,
            balance: awaiting,
            settlement: None,
        };
        let effects = vec![
            Effect::SendCommand {
                step: Step::User,
                attempt: 1,
            },
            Effect::SendCommand {
                step: Step::Balance,
                attempt: 1,
            },
        ];
        (saga, effects)
    }

    pub fn step(&self, step: Step) -> StepState {
        match step {
            Step::User => self.user,
            Step::Balance => self.balance,
        }
    }

    fn step_mut(&mut self, step: Step) -> &mut StepState {
        match step {
            Step::User => &mut self.user,
            Step::Balance => &mut self.balance,
        }
    }

    pub fn is_settled(&self) -> bool {
        self.settlement.is_some()
    }

    /// When the saga next needs a tick; `None` once settled.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        if self.is_settled() {
            return None;
        }
        Step::ALL
            .iter()
            .filter_map(|s| match self.step(*s) {
                StepState::Awaiting { deadline, .. } => Some(deadline),
                StepState::Done { .. } => None,
            })
            .min()
    }

    /// A validator replied to attempt `attempt` of `step`.
    ///
    /// A reply to any attempt of a step still awaiting resolves it (a slow
    /// first reply is as good as the retry's). Replies to a finished step or a
    /// settled saga change nothing, so redelivery is harmless.
    pub fn on_reply(
        &mut self,
        step: Step,
        attempt: u32,
        outcome: StepOutcome,
        now: DateTime<Utc>,
        policy: &SagaPolicy,
    ) -> Vec<Effect> {
        if self.is_settled() {
            return vec![];
        }
        let StepState::Awaiting {
            attempt: current,
            timeouts,
            retry_unavailable,
            ..
        } = self.step(step)
        else {
            return vec![];
        };
        let resolved = match outcome {
            StepOutcome::Unavailable => match policy.on_unavailable {
                UnavailablePolicy::Cancel => StepOutcome::Failed(CancelReason::UserApiUnavailable),
                UnavailablePolicy::Wait => {
                    if attempt != current || retry_unavailable {
                        // An older attempt's answer (the newer one is still
                        // out), or this attempt's answer delivered again.
                        return vec![];
                    }
                    let deadline =
                        (now + policy.wait_delay(current)).min(self.wait_deadline(policy));
                    *self.step_mut(step) = StepState::Awaiting {
                        attempt: current,
                        deadline,
                        retry_unavailable: true,
                        timeouts,
                    };
                    return vec![Effect::ReplyAccepted {
                        step,
                        attempt,
                        outcome,
                    }];
                }
            },
            other => other,
        };
        *self.step_mut(step) = StepState::Done { outcome: resolved };
        let mut effects = vec![Effect::ReplyAccepted {
            step,
            attempt,
            outcome,
        }];
        effects.extend(self.settle_if_decided());
        effects
    }

    /// Time passed: act on every step whose deadline is due.
    pub fn on_tick(&mut self, now: DateTime<Utc>, policy: &SagaPolicy) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.is_settled() {
            return effects;
        }
        for step in Step::ALL {
            let StepState::Awaiting {
                attempt,
                deadline,
                retry_unavailable,
                timeouts,
            } = self.step(step)
            else {
                continue;
            };
            if now < deadline {
                continue;
            }
            if retry_unavailable {
                if now >= self.wait_deadline(policy) {
                    *self.step_mut(step) = StepState::Done {
                        outcome: StepOutcome::Failed(CancelReason::UserApiUnavailable),
                    };
                } else {
                    let next = attempt + 1;
                    *self.step_mut(step) = StepState::Awaiting {
                        attempt: next,
                        deadline: now + policy.timeout_for(timeouts + 1),
                        retry_unavailable: false,
                        timeouts,
                    };
                    effects.push(Effect::SendCommand {
                        step,
                        attempt: next,
                    });
                }
                continue;
            }
            effects.push(Effect::TimedOut { step, attempt });
            let timeouts = timeouts + 1;
            if timeouts < policy.max_attempts {
                let next = attempt + 1;
                *self.step_mut(step) = StepState::Awaiting {
                    attempt: next,
                    deadline: now + policy.timeout_for(timeouts + 1),
                    retry_unavailable: false,
                    timeouts,
                };
                effects.push(Effect::SendCommand {
                    step,
                    attempt: next,
                });
            } else {
                *self.step_mut(step) = StepState::Done {
                    outcome: StepOutcome::Failed(CancelReason::ValidationTimeout),
                };
            }
        }
        effects.extend(self.settle_if_decided());
        effects
    }

    fn wait_deadline(&self, policy: &SagaPolicy) -> DateTime<Utc> {
        self.started_at + policy.saga_deadline
    }

    fn settle_if_decided(&mut self) -> Option<Effect> {
        if self.is_settled() {
            return None;
        }
        let outcomes = [self.user, self.balance].map(|s| match s {
            StepState::Done { outcome } => Some(outcome),
            StepState::Awaiting { .. } => None,
        });
        let failure = outcomes.iter().flatten().find_map(|o| match o {
            StepOutcome::Failed(reason) => Some(*reason),
            _ => None,
        });
        let settlement = match failure {
            Some(reason) => Settlement::Canceled(reason),
            None if outcomes.iter().all(|o| *o == Some(StepOutcome::Passed)) => {
                Settlement::Approved
            }
            None => return None,
        };
        self.settlement = Some(settlement);
        Some(Effect::Settle(settlement))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CancelReason::*;
    use Effect::*;
    use Step::*;
    use StepOutcome::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(n: i64) -> Duration {
        Duration::seconds(n)
    }

    fn policy() -> SagaPolicy {
        SagaPolicy {
            step_timeout: secs(5),
            max_attempts: 3,
            backoff_factor: 2,
            retry_delay: secs(1),
            saga_deadline: secs(60),
            on_unavailable: UnavailablePolicy::Cancel,
        }
    }

    fn started() -> Saga {
        Saga::start(t0(), &policy()).0
    }

    #[test]
    fn start_sends_both_commands_at_once() {
        let (saga, effects) = Saga::start(t0(), &policy());
        assert_eq!(
            effects,
            [
                SendCommand {
                    step: User,
                    attempt: 1
                },
                SendCommand {
                    step: Balance,
                    attempt: 1
                }
            ]
        );
        assert_eq!(saga.next_deadline(), Some(t0() + secs(5)));
        assert!(!saga.is_settled());
    }

    #[test]
    fn both_passing_approves_in_either_order() {
        for order in [[User, Balance], [Balance, User]] {
            let mut s = started();
            let first = s.on_reply(order[0], 1, Passed, t0(), &policy());
            assert_eq!(
                first,
                [ReplyAccepted {
                    step: order[0],
                    attempt: 1,
                    outcome: Passed
                }]
            );
            let second = s.on_reply(order[1], 1, Passed, t0(), &policy());
            assert_eq!(
                second,
                [
                    ReplyAccepted {
                        step: order[1],
                        attempt: 1,
                        outcome: Passed
                    },
                    Settle(Settlement::Approved)
                ]
            );
            assert_eq!(s.settlement, Some(Settlement::Approved));
            assert_eq!(s.next_deadline(), None);
        }
    }

    #[test]
    fn the_first_failure_cancels_without_waiting_for_the_other_step() {
        for (step, reason) in [(User, UserInvalid), (Balance, BalanceLimitExceeded)] {
            let mut s = started();
            let effects = s.on_reply(step, 1, Failed(reason), t0(), &policy());
            assert_eq!(effects.last(), Some(&Settle(Settlement::Canceled(reason))));
            let other = if step == User { Balance } else { User };
            assert_eq!(
                s.on_reply(other, 1, Passed, t0(), &policy()),
                [],
                "settled sagas ignore replies"
            );
        }
    }

    #[test]
    fn a_duplicate_reply_changes_nothing() {
        let mut s = started();
        s.on_reply(User, 1, Passed, t0(), &policy());
        let before = s.clone();
        assert_eq!(s.on_reply(User, 1, Passed, t0(), &policy()), []);
        assert_eq!(
            s.on_reply(User, 1, Failed(UserInvalid), t0(), &policy()),
            []
        );
        assert_eq!(s, before);
    }

    #[test]
    fn a_settled_saga_never_changes() {
        let mut s = started();
        s.on_reply(User, 1, Passed, t0(), &policy());
        s.on_reply(Balance, 1, Passed, t0(), &policy());
        let settled = s.clone();
        assert_eq!(s.on_tick(t0() + secs(3600), &policy()), []);
        for step in Step::ALL {
            for outcome in [Passed, Failed(UserInvalid), Unavailable] {
                assert_eq!(s.on_reply(step, 9, outcome, t0(), &policy()), []);
            }
        }
        assert_eq!(s, settled);
    }

    #[test]
    fn a_tick_before_the_deadline_does_nothing() {
        let mut s = started();
        assert_eq!(s.on_tick(t0() + secs(4), &policy()), []);
        assert_eq!(s, started());
    }

    #[test]
    fn a_missing_reply_is_retried_with_a_growing_deadline_then_times_out() {
        let p = policy();
        let mut s = started();
        s.on_reply(Balance, 1, Passed, t0(), &p);

        let now = t0() + secs(5);
        assert_eq!(
            s.on_tick(now, &p),
            [
                TimedOut {
                    step: User,
                    attempt: 1
                },
                SendCommand {
                    step: User,
                    attempt: 2
                }
            ]
        );
        assert_eq!(s.next_deadline(), Some(now + secs(10)));

        let now = now + secs(10);
        assert_eq!(
            s.on_tick(now, &p),
            [
                TimedOut {
                    step: User,
                    attempt: 2
                },
                SendCommand {
                    step: User,
                    attempt: 3
                }
            ]
        );
        assert_eq!(s.next_deadline(), Some(now + secs(20)));

        let now = now + secs(20);
        assert_eq!(
            s.on_tick(now, &p),
            [
                TimedOut {
                    step: User,
                    attempt: 3
                },
                Settle(Settlement::Canceled(ValidationTimeout))
            ]
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn both_steps_timing_out_together_cancel_once() {
        let p = SagaPolicy {
            max_attempts: 1,
            ..policy()
        };
        let mut s = Saga::start(t0(), &p).0;
        let effects = s.on_tick(t0() + secs(5), &p);
        assert_eq!(
            effects,
            [
                TimedOut {
                    step: User,
                    attempt: 1
                },
                TimedOut {
                    step: Balance,
                    attempt: 1
                },
                Settle(Settlement::Canceled(ValidationTimeout))
            ]
        );
    }

    #[test]
    fn a_late_reply_to_an_earlier_attempt_still_counts() {
        let p = policy();
        let mut s = started();
        s.on_tick(t0() + secs(5), &p);
        s.on_reply(Balance, 2, Passed, t0() + secs(6), &p);
        let effects = s.on_reply(User, 1, Passed, t0() + secs(7), &p);
        assert_eq!(effects.last(), Some(&Settle(Settlement::Approved)));
    }

    #[test]
    fn unavailable_cancels_under_the_cancel_policy() {
        let mut s = started();
        let effects = s.on_reply(User, 1, Unavailable, t0(), &policy());
        assert_eq!(
            effects,
            [
                ReplyAccepted {
                    step: User,
                    attempt: 1,
                    outcome: Unavailable
                },
                Settle(Settlement::Canceled(UserApiUnavailable))
            ]
        );
    }

    #[test]
    fn unavailable_waits_then_asks_again_under_the_wait_policy() {
        let p = SagaPolicy {
            on_unavailable: UnavailablePolicy::Wait,
            ..policy()
        };
        let mut s = Saga::start(t0(), &p).0;
        s.on_reply(Balance, 1, Passed, t0(), &p);
        assert_eq!(
            s.on_reply(User, 1, Unavailable, t0(), &p),
            [ReplyAccepted {
                step: User,
                attempt: 1,
                outcome: Unavailable
            }]
        );
        assert_eq!(s.next_deadline(), Some(t0() + secs(1)));
        // The same answer delivered again changes nothing (no second event, same deadline).
        let waiting = s.clone();
        assert_eq!(s.on_reply(User, 1, Unavailable, t0() + secs(0), &p), []);
        assert_eq!(s, waiting);
        assert_eq!(
            s.on_tick(t0() + secs(1), &p),
            [SendCommand {
                step: User,
                attempt: 2
            }]
        );
        // A stale "unavailable" for attempt 1 is ignored while attempt 2 is out.
        assert_eq!(s.on_reply(User, 1, Unavailable, t0() + secs(1), &p), []);
        let effects = s.on_reply(User, 2, Passed, t0() + secs(2), &p);
        assert_eq!(effects.last(), Some(&Settle(Settlement::Approved)));
    }

    #[test]
    fn waiting_gives_up_at_the_saga_deadline() {
        let p = SagaPolicy {
            on_unavailable: UnavailablePolicy::Wait,
            saga_deadline: secs(3),
            ..policy()
        };
        let mut s = Saga::start(t0(), &p).0;
        let mut now = t0();
        let mut attempt = 1;
        loop {
            s.on_reply(User, attempt, Unavailable, now, &p);
            now = s.next_deadline().unwrap();
            let effects = s.on_tick(now, &p);
            if let Some(Settle(settlement)) = effects.last() {
                assert_eq!(*settlement, Settlement::Canceled(UserApiUnavailable));
                break;
            }
            assert_eq!(
                effects,
                [SendCommand {
                    step: User,
                    attempt: attempt + 1
                }]
            );
            attempt += 1;
            assert!(attempt < 10, "must give up");
        }
        assert!(now <= t0() + secs(3));
    }

    #[test]
    fn asking_again_after_unavailable_answers_does_not_use_up_attempts() {
        let p = SagaPolicy {
            on_unavailable: UnavailablePolicy::Wait,
            saga_deadline: secs(3600),
            ..policy()
        };
        let mut s = Saga::start(t0(), &p).0;
        s.on_reply(Balance, 1, Passed, t0(), &p);
        // A long outage: many more "unavailable" answers than max_attempts.
        let mut now = t0();
        for attempt in 1..=20 {
            s.on_reply(User, attempt, Unavailable, now, &p);
            now = s.next_deadline().unwrap();
            assert_eq!(
                s.on_tick(now, &p),
                [SendCommand {
                    step: User,
                    attempt: attempt + 1
                }]
            );
        }
        // Then one command goes unanswered: that is the first timeout, not the last.
        now = s.next_deadline().unwrap();
        assert_eq!(
            s.on_tick(now, &p),
            [
                TimedOut {
                    step: User,
                    attempt: 21
                },
                SendCommand {
                    step: User,
                    attempt: 22
                }
            ]
        );
        let effects = s.on_reply(User, 22, Passed, now, &p);
        assert_eq!(effects.last(), Some(&Settle(Settlement::Approved)));
    }

    #[test]
    fn the_pause_after_unavailable_grows_up_to_sixteen_times() {
        let p = policy();
        let pauses: Vec<i64> = (1..=7).map(|a| p.wait_delay(a).num_seconds()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn timeouts_grow_by_the_backoff_factor() {
        let p = policy();
        assert_eq!(p.timeout_for(1), secs(5));
        assert_eq!(p.timeout_for(2), secs(10));
        assert_eq!(p.timeout_for(3), secs(20));
        assert!(
            p.timeout_for(200) > secs(20),
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn saga_state_survives_serialization() {
        let mut s = started();
        s.on_reply(User, 1, Failed(UserInvalid), t0(), &policy());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Saga>(&json).unwrap(), s);
    }
}
