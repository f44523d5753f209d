//! ordersaga: order validation as an orchestrated saga over Kafka.
//!
//! - [`domain`]: orders, money, payment methods, the saga state machine (pure);
//! - [`application`]: use cases and the ports they need;
//! - [`adapters`]: HTTP, PostgreSQL, MongoDB, Kafka and the user API;
//! - [`config`], [`startup`], [`telemetry`], [`metrics`]: reading settings, wiring, logging, metrics;
//! - [`tools`]: programs beside the service (the stub user directory, the container probe).
//!
//! The measuring tool `ordersaga-bench` (`src/bin/ordersaga-bench/`) is a binary of its own
//! that uses this library's public items; the library does not know it.

pub mod adapters;
pub mod application;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod startup;
pub mod telemetry;
pub mod tools;
