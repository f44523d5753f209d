//! The two validators: each consumes its command topic and replies.
//!
//! A reply's message id is derived from its command's id, so a command
//! handled twice produces the same reply twice and the orchestrator drops the
//! copy. The user validator also remembers its recent replies, so a
//! redelivered command does not ask the user API again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::domain::Money;

use super::messages::{
    BalanceValidated, BalanceVerdict, InboundMessage, MessageType, OutboundMessage, Topic,
    UserValidated, UserVerdict, ValidateBalance, ValidateUser, reply_id,
};
use super::ports::{HandleError, MessageHandler, MessagePublisher, UserDirectory, UserStatus};

/// The last `capacity` replies, by command id (oldest forgotten first).
pub struct RecentReplies {
    capacity: usize,
    inner: Mutex<(HashMap<Uuid, OutboundMessage>, VecDeque<Uuid>)>,
}

impl RecentReplies {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub fn get(&self, command: Uuid) -> Option<OutboundMessage> {
        self.inner
            .lock()
            .expect("cache lock")
            .0
            .get(&command)
            .cloned()
    }

    pub fn put(&self, command: Uuid, reply: OutboundMessage) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.inner.lock().expect("cache lock");
        let (map, order) = &mut *guard;
        if map.insert(command, reply).is_none() {
            order.push_back(command);
            if order.len() > self.capacity
                && let Some(oldest) = order.pop_front()
            {
                map.remove(&oldest);
            }
        }
    }
}

/// Asks the user directory whether the order's user is valid.
pub struct UserValidator {
    directory: Arc<dyn UserDirectory>,
    publisher: Arc<dyn MessagePublisher>,
    recent: RecentReplies,
}

impl UserValidator {
    pub fn new(directory: Arc<dyn UserDirectory>, publisher: Arc<dyn MessagePublisher>) -> Self {
        Self {
            directory,
            publisher,
            recent: RecentReplies::new(10_000),
        }
    }
}

#[async_trait::async_trait]
impl MessageHandler for UserValidator {
    async fn handle(&self, message: &InboundMessage) -> Result<(), HandleError> {
        let m = message
            .decode::<ValidateUser>(MessageType::ValidateUser)
            .map_err(HandleError::Poison)?;
        if let Some(reply) = self.recent.get(m.message_id) {
            tracing::debug!(command = %m.message_id, "command seen before; sending the same reply again");
            self.publisher.publish(&[reply]).await?;
            return Ok(());
        }
        let cmd = &m.payload;
        let (result, detail) = match self.directory.check(&cmd.user_id).await {
            Ok(UserStatus::Valid) => (UserVerdict::Valid, None),
            Ok(UserStatus::Invalid) => (UserVerdict::Invalid, None),
            Err(e) => {
                tracing::warn!(order_id = %cmd.order_id, error = %e, "user API unavailable; replying error");
                (UserVerdict::Error, Some(e.to_string()))
            }
        };
        let reply = UserValidated {
            order_id: cmd.order_id,
            attempt: cmd.attempt,
            result,
            detail,
        };
        let out = OutboundMessage::new(
            reply_id(m.message_id),
            Topic::UserValidationReplies,
            cmd.order_id,
            MessageType::UserValidated,
            &m.correlation_id,
            &reply,
        );
        self.publisher.publish(std::slice::from_ref(&out)).await?;
        self.recent.put(m.message_id, out);
        Ok(())
    }
}

/// Checks the order's value against the balance limit (inclusive).
pub struct BalanceValidator {
    limit: Money,
    publisher: Arc<dyn MessagePublisher>,
}

impl BalanceValidator {
    pub fn new(limit: Money, publisher: Arc<dyn MessagePublisher>) -> Self {
        Self { limit, publisher }
    }

    pub fn verdict(&self, value: Money) -> BalanceVerdict {
        if value <= self.limit {
            BalanceVerdict::WithinLimit
        } else {
            BalanceVerdict::OverLimit
        }
    }
}

#[async_trait::async_trait]
impl MessageHandler for BalanceValidator {
    async fn handle(&self, message: &InboundMessage) -> Result<(), HandleError> {
        let m = message
            .decode::<ValidateBalance>(MessageType::ValidateBalance)
            .map_err(HandleError::Poison)?;
        let cmd = &m.payload;
        let reply = BalanceValidated {
            order_id: cmd.order_id,
            attempt: cmd.attempt,
            result: self.verdict(cmd.value),
            limit: self.limit,
        };
        let out = OutboundMessage::new(
            reply_id(m.message_id),
            Topic::BalanceValidationReplies,
            cmd.order_id,
            MessageType::BalanceValidated,
            &m.correlation_id,
            &reply,
        );
        self.publisher.publish(&[out]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderId;

    fn reply(n: u32) -> OutboundMessage {
        OutboundMessage::new(
            Uuid::new_v4(),
            Topic::UserValidationReplies,
            OrderId::new(),
            MessageType::UserValidated,
            "c",
            &serde_json::json!({ "n": n }),
        )
    }

    #[test]
    fn recent_replies_forget_the_oldest_beyond_capacity() {
        let cache = RecentReplies::new(2);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            cache.put(*id, reply(i as u32));
        }
        assert!(cache.get(ids[0]).is_none());
        assert_eq!(cache.get(ids[2]).unwrap().payload["n"], 2);
        cache.put(ids[2], reply(9));
        assert_eq!(
            cache.get(ids[1]).unwrap().payload["n"],
            1,
            "re-putting a known id evicts nothing"
        );
    }
}
