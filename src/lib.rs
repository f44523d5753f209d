//! ordersaga: order validation as an orchestrated saga over Kafka.
//!
//! - [`domain`]: orders, money, payment methods, the saga state machine (pure);
//! - [`application`]: use cases and the ports they need;
//! - [`adapters`]: HTTP, PostgreSQL, MongoDB, Kafka and the user API;
//! - [`config`], [`startup`], [`telemetry`], [`metrics`]: reading settings, wiring, logging, metrics;
//! - [`tools`]: programs beside the service (the stub user directory, the container probe).
//! - [`bench`]: the `ordersaga bench` measuring tool (not part of the service).

pub mod adapters;
pub mod application;
pub mod bench;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod startup;
pub mod telemetry;
pub mod tools;
