//! The ports: what the use cases need from the outside world, one module per
//! area. Each method's `# Errors` says what its failures mean; the adapters in
//! `crate::adapters` implement them, and `fakes` keeps them in memory for
//! tests.

mod errors;
mod log;
mod messaging;
mod orders;
mod saga;
mod users;

pub mod fakes;

pub use errors::*;
pub use log::*;
pub use messaging::*;
pub use orders::*;
pub use saga::*;
pub use users::*;
