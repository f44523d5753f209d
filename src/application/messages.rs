//! The saga's message protocol: topics, message types, headers and payloads.
//!
//! Every message is JSON, keyed by order id, and carries four headers:
//! `message-id`, `correlation-id`, `message-type` and `message-time`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::domain::{
    CancelReason, Money, OrderId, OrderStatus, PaymentMethod, StepOutcome, UserId,
};

pub const HEADER_MESSAGE_ID: &str = "message-id";
pub const HEADER_CORRELATION_ID: &str = "correlation-id";
pub const HEADER_MESSAGE_TYPE: &str = "message-type";
pub const HEADER_MESSAGE_TIME: &str = "message-time";
/// Added to dead letters: why the message was set aside, and where it came from.
pub const HEADER_DLQ_ERROR: &str = "dlq-error";
pub const HEADER_DLQ_SOURCE: &str = "dlq-source";

/// Logical topics; the broker adapter gives them the deployment's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    OrdersCreated,
    UserValidationCommands,
    UserValidationReplies,
    BalanceValidationCommands,
    BalanceValidationReplies,
    OrdersSettled,
    DeadLetter,
}

impl Topic {
    pub const ALL: [Topic; 7] = [
        Topic::OrdersCreated,
        Topic::UserValidationCommands,
        Topic::UserValidationReplies,
        Topic::BalanceValidationCommands,
        Topic::BalanceValidationReplies,
        Topic::OrdersSettled,
        Topic::DeadLetter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Topic::OrdersCreated => "orders.created",
            Topic::UserValidationCommands => "user-validation.commands",
            Topic::UserValidationReplies => "user-validation.replies",
            Topic::BalanceValidationCommands => "balance-validation.commands",
            Topic::BalanceValidationReplies => "balance-validation.replies",
            Topic::OrdersSettled => "orders.settled",
            Topic::DeadLetter => "dead-letter",
        }
    }

    pub fn from_name(name: &str) -> Option<Topic> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageType {
    OrderCreated,
    ValidateUser,
    UserValidated,
    ValidateBalance,
    BalanceValidated,
    OrderSettled,
}

impl MessageType {
    pub const ALL: [MessageType; 6] = [
        Self::OrderCreated,
        Self::ValidateUser,
        Self::UserValidated,
        Self::ValidateBalance,
        Self::BalanceValidated,
        Self::OrderSettled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order-created",
            Self::ValidateUser => "validate-user",
            Self::UserValidated => "user-validated",
            Self::ValidateBalance => "validate-balance",
            Self::BalanceValidated => "balance-validated",
            Self::OrderSettled => "order-settled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message on its way out, through the outbox or straight to the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    pub message_id: Uuid,
    pub topic: Topic,
    pub key: String,
    pub message_type: MessageType,
    pub correlation_id: String,
    pub time: DateTime<Utc>,
    pub payload: serde_json::Value,
}

impl OutboundMessage {
    pub fn new<P: Serialize>(
        message_id: Uuid,
        topic: Topic,
        order_id: OrderId,
        message_type: MessageType,
        correlation_id: &str,
        payload: &P,
    ) -> Self {
        Self {
            message_id,
            topic,
            key: order_id.to_string(),
            message_type,
            correlation_id: correlation_id.to_owned(),
            time: Utc::now(),
            payload: serde_json::to_value(payload).expect("message payloads serialize"),
        }
    }

    /// The headers every message carries.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_MESSAGE_ID, self.message_id.to_string()),
            (HEADER_CORRELATION_ID, self.correlation_id.clone()),
            (HEADER_MESSAGE_TYPE, self.message_type.to_string()),
            (
                HEADER_MESSAGE_TIME,
                self.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ]
    }
}

/// A message as a consumer received it, not yet trusted.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// `None` when the message came from a topic this service does not know.
    pub topic: Option<Topic>,
    pub topic_name: String,
    /// Where the transport took it from, as the transport names it (from
    /// the Kafka adapter, `topic/partition/offset`): for logs and dead letters.
    pub source: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A message as a consumer receives it once the broker delivered it (tests
/// and the in-memory ports deliver this way).
impl From<&OutboundMessage> for InboundMessage {
    fn from(m: &OutboundMessage) -> Self {
        Self {
            topic: Some(m.topic),
            topic_name: m.topic.name().into(),
            source: format!("{}/0/0", m.topic.name()),
            key: Some(m.key.clone().into_bytes()),
            payload: Some(serde_json::to_vec(&m.payload).expect("JSON values serialize")),
            headers: m
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
                .collect(),
        }
    }
}

impl InboundMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Reads the headers and the JSON payload, or says why the message is poison.
    pub fn decode<P: DeserializeOwned>(&self, expected: MessageType) -> Result<Decoded<P>, String> {
        let message_id = self
            .header(HEADER_MESSAGE_ID)
            .ok_or("missing message-id header")?
            .parse::<Uuid>()
            .map_err(|e| format!("message-id header is not a UUID: {e}"))?;
        let message_type = self
            .header(HEADER_MESSAGE_TYPE)
            .ok_or("missing message-type header")?;
        if message_type != expected.as_str() {
            return Err(format!(
                "message-type {message_type:?} does not belong on {} (expected {expected})",
                self.topic_name
            ));
        }
        let correlation_id = self
            .header(HEADER_CORRELATION_ID)
            .unwrap_or_default()
            .to_owned();
        let payload = self.payload.as_deref().ok_or("empty payload")?;
        let payload = serde_json::from_slice(payload)
            .map_err(|e| format!("payload is not a valid {expected}: {e}"))?;
        let sent_at = self
            .header(HEADER_MESSAGE_TIME)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(Decoded {
            message_id,
            correlation_id,
            sent_at,
            payload,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Decoded<P> {
    pub message_id: Uuid,
    pub correlation_id: String,
    /// The `message-time` header, when present and readable (the sender's clock).
    pub sent_at: Option<DateTime<Utc>>,
    pub payload: P,
}

/// `orders.created`: a new order to validate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub value: Money,
    pub installment: u32,
    pub method: PaymentMethod,
    pub created_at: DateTime<Utc>,
}

/// `user-validation.commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateUser {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub attempt: u32,
}

/// The user validator's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserVerdict {
    Valid,
    Invalid,
    /// The user directory could not be asked.
    Error,
}

/// `user-validation.replies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserValidated {
    pub order_id: OrderId,
    pub attempt: u32,
    pub result: UserVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl UserValidated {
    pub fn outcome(&self) -> StepOutcome {
        match self.result {
            UserVerdict::Valid => StepOutcome::Passed,
            UserVerdict::Invalid => StepOutcome::Failed(CancelReason::UserInvalid),
            UserVerdict::Error => StepOutcome::Unavailable,
        }
    }
}

/// `balance-validation.commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateBalance {
    pub order_id: OrderId,
    pub value: Money,
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceVerdict {
    WithinLimit,
    OverLimit,
}

/// `balance-validation.replies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceValidated {
    pub order_id: OrderId,
    pub attempt: u32,
    pub result: BalanceVerdict,
    pub limit: Money,
}

impl BalanceValidated {
    pub fn outcome(&self) -> StepOutcome {
        match self.result {
            BalanceVerdict::WithinLimit => StepOutcome::Passed,
            BalanceVerdict::OverLimit => StepOutcome::Failed(CancelReason::BalanceLimitExceeded),
        }
    }
}

/// `orders.settled`: for downstream consumers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSettled {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub value: Money,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<CancelReason>,
    pub settled_at: DateTime<Utc>,
}

/// The id of the reply to a command: derived from the command's id, so a
/// command handled twice yields the same reply id and the orchestrator drops
/// the second reply as a duplicate.
pub fn reply_id(command_id: Uuid) -> Uuid {
    Uuid::new_v5(&command_id, b"reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(headers: &[(&str, &str)], payload: &str) -> InboundMessage {
        InboundMessage {
            topic: Some(Topic::OrdersCreated),
            topic_name: "orders.created".into(),
            source: "test/0/0".into(),
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn topic_names_round_trip() {
        for t in Topic::ALL {
            assert_eq!(Topic::from_name(t.name()), Some(t));
        }
        for t in MessageType::ALL {
            assert_eq!(MessageType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[test]
    fn an_outbound_message_round_trips_through_decode() {
        let order_id = OrderId::new();
        let payload = ValidateUser {
            order_id,
            user_id: UserId::parse("u1").unwrap(),
            attempt: 2,
        };
        let out = OutboundMessage::new(
            Uuid::new_v4(),
            Topic::UserValidationCommands,
            order_id,
            MessageType::ValidateUser,
            "corr",
            &payload,
        );
        let headers: Vec<(&str, String)> = out.headers().into();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let msg = inbound(&headers, &out.payload.to_string());
        let decoded = msg
            .decode::<ValidateUser>(MessageType::ValidateUser)
            .unwrap();
        assert_eq!(decoded.message_id, out.message_id);
        assert_eq!(decoded.correlation_id, "corr");
        assert_eq!(decoded.payload, payload);
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let id = Uuid::new_v4().to_string();
        let good = [
            ("message-id", id.as_str()),
            ("message-type", "order-created"),
        ];
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 5] = [
            (
                &[("message-type", "order-created")],
                "{}",
                "missing message-id",
            ),
            (
                &[("message-id", "nope"), ("message-type", "order-created")],
                "{}",
                "not a UUID",
            ),
            (&[("message-id", id.as_str())], "{}", "missing message-type"),
            (
                &[
                    ("message-id", id.as_str()),
                    ("message-type", "validate-user"),
                ],
                "{}",
                "does not belong",
            ),
            (&good, "garbage", "payload is not a valid order-created"),
        ];
        for (headers, payload, expected) in cases {
            let err = inbound(headers, payload)
                .decode::<OrderCreated>(MessageType::OrderCreated)
                .unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn reply_ids_are_deterministic() {
        let c = Uuid::new_v4();
        assert_eq!(reply_id(c), reply_id(c));
        assert_ne!(reply_id(c), reply_id(Uuid::new_v4()));
        assert_ne!(reply_id(c), c);
    }

    #[test]
    fn verdicts_map_to_step_outcomes() {
        let order_id = OrderId::new();
        let u = |result| {
            UserValidated {
                order_id,
                attempt: 1,
                result,
                detail: None,
            }
            .outcome()
        };
        assert_eq!(u(UserVerdict::Valid), StepOutcome::Passed);
        assert_eq!(
            u(UserVerdict::Invalid),
            StepOutcome::Failed(CancelReason::UserInvalid)
        );
        assert_eq!(u(UserVerdict::Error), StepOutcome::Unavailable);
        let limit = Money::parse("10000").unwrap();
        let b = |result| {
            BalanceValidated {
                order_id,
                attempt: 1,
                result,
                limit,
            }
            .outcome()
        };
        assert_eq!(b(BalanceVerdict::WithinLimit), StepOutcome::Passed);
        assert_eq!(
            b(BalanceVerdict::OverLimit),
            StepOutcome::Failed(CancelReason::BalanceLimitExceeded)
        );
    }
}
