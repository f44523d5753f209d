//! The user directory over HTTP: the client the user validator uses, and the
//! stub server (`ordersaga user-api`) for local runs and tests.

pub mod breaker;
mod client;
mod stub;

pub use client::{HttpUserDirectory, UserApiSettings};
pub use stub::{UserRecord, router as stub_router};
