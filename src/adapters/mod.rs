//! Adapters: the HTTP API and Kafka consumers drive the application; Postgres,
//! MongoDB, the Kafka producer and the user API client are driven by it.

pub mod http;
pub mod kafka;
pub mod mongo;
pub mod postgres;
pub mod user_api;
