//! Adapters: the HTTP API and Kafka consumers drive the application; Postgres,
//! MongoDB, the Kafka producer and the user API client are driven by it.

pub mod http;
pub mod kafka;
pub mod mongo;
pub mod postgres;
pub mod user_api;

/// A dependency refused this process for good: its certificate did not
/// verify, or it refused the credentials. Retrying cannot help, so start-up
/// stops at once with this message (which names the dependency) instead of
/// retrying until its patience runs out.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Refused {
    /// Whether `e`, or an error it wraps, is a refusal.
    pub fn is_in(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<Refused>())
    }
}
