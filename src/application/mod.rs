//! Use cases and the ports they need.
//!
//! Inbound adapters (the HTTP API, the message consumers) call the services here; the
//! services reach the outside world only through the traits in [`ports`],
//! which the outbound adapters implement.

pub mod error;
pub mod health;
pub mod messages;
pub mod orchestrator;
pub mod orders;
mod pairing;
pub mod ports;
pub mod relay;
pub mod validators;

pub use error::AppError;
