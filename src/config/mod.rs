//! Command line and environment: every setting has an environment variable
//! and a default that works with the local stack (`make stack-up`).
//!
//! - `cli.rs`: the subcommands and their argument groups as clap reads them
//!   (names, environment variables, defaults, ranges); nothing else.
//! - `settings.rs`: what each argument group becomes in a run's
//!   [`Settings`](crate::startup::Settings), checked on the way (files that
//!   must be readable, Kafka security options that need each other), and the
//!   helpers for it ([`secret`]).
//! - `plan.rs`: [`Command::plan`], one row per subcommand (the roles it runs,
//!   the argument groups it carries) and the one function that turns a row
//!   into `(Roles, Settings)`.
//!
//! `startup.rs` then starts the roles with those settings.

mod cli;
mod plan;
mod settings;

pub use cli::{
    AllArgs, ApiArgs, AuthArgs, BalanceArgs, BalanceValidatorArgs, Cli, Command, DbArgs,
    EmbeddedRelay, FailurePolicy, HttpArgs, KafkaArgs, KafkaSaslMechanism, KafkaSecurityProtocol,
    LogArgs, LogFormat, MigrateArgs, MongoArgs, OpsArgs, OrchestratorArgs, RelayArgs,
    RelayOnlyArgs, SagaArgs, ShutdownArgs, StubArgs, UserApiClientArgs, UserApiStubArgs,
    UserValidatorArgs,
};
pub use settings::secret;
