//! Integration tests against the real servers of the local stack
//! (`make stack-up`): PostgreSQL, a Kafka-protocol broker and a
//! MongoDB-protocol server. Every test gets its own database, topic prefix,
//! consumer groups and Mongo database, so tests run in parallel; tests that
//! stop a server start a private one.

mod access;
mod common;
mod compose;
mod e2e;
mod failures;
mod http_api;
mod kafka;
mod mongo;
mod observability;
mod orchestrator;
mod postgres;
mod scale;
mod security;
mod upgrade;
mod user_api;
