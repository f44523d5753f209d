//! The core of ordersaga: orders, money, payment methods and the saga state
//! machine. Pure types and functions only: no I/O, no framework types, no clock
//! (callers pass `now`), so every rule here is unit-tested directly.

pub mod event;
pub mod money;
pub mod order;
pub mod payment;
pub mod saga;

pub use event::SagaEventKind;
pub use money::Money;
pub use order::{CancelReason, NewOrder, Order, OrderId, OrderStatus, UserId};
pub use payment::{Installment, PaymentMethod};
pub use saga::{Effect, Saga, SagaPolicy, Settlement, Step, StepOutcome, StepState};

/// A field of an order that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
