//! The kinds of saga event written to the event log.

use std::fmt;

/// One entry of an order's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaEventKind {
    /// The order was accepted and stored as PROCESSING.
    OrderCreated,
    /// The orchestrator picked the order up. No longer written: the first two
    /// `command_sent` events, in the same transaction, mark the start. Earlier
    /// builds logged it (an empty payload), so old timelines still hold it.
    SagaStarted,
    /// A validation command went out (first send or retry).
    CommandSent,
    /// A validator's reply was taken into account.
    ReplyReceived,
    /// A validation step got no reply within its deadline.
    StepTimedOut,
    /// The order left PROCESSING.
    StatusChanged,
}

impl SagaEventKind {
    pub const ALL: [SagaEventKind; 6] = [
        Self::OrderCreated,
        Self::SagaStarted,
        Self::CommandSent,
        Self::ReplyReceived,
        Self::StepTimedOut,
        Self::StatusChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order_created",
            Self::SagaStarted => "saga_started",
            Self::CommandSent => "command_sent",
            Self::ReplyReceived => "reply_received",
            Self::StepTimedOut => "step_timed_out",
            Self::StatusChanged => "status_changed",
        }
    }
}

impl fmt::Display for SagaEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SagaEventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event type {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in SagaEventKind::ALL {
            assert_eq!(k.as_str().parse::<SagaEventKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
