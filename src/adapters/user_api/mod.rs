//! The user directory over HTTP: the client the user validator uses, with
//! its circuit breaker. (The stub server for local runs and tests is in
//! `crate::tools`.)

pub mod breaker;
mod client;

pub use client::{HttpUserDirectory, UserApiSettings, UserRecord};
