//! Which components each subcommand runs, and with which settings.
//!
//! Each subcommand is one row of [`Command::parts`]: the roles it runs and the
//! argument groups it carries. [`Parts::plan`] turns any row into the run's
//! `(Roles, Settings)`; a group a subcommand lacks leaves
//! `Settings::default()`'s value (the command line's default) in place.

use std::net::{IpAddr, SocketAddr};

use crate::startup::{Roles, Settings};

use super::cli::{
    AuthArgs, BalanceArgs, Command, DbArgs, HttpArgs, KafkaArgs, MongoArgs, OpsArgs, RelayArgs,
    SagaArgs, ShutdownArgs, StubArgs, UserApiClientArgs,
};

/// Where the user API is (on 127.0.0.1) when USER_API_URL is not set: the
/// stub's default USER_API_PORT.
const DEFAULT_USER_API_PORT: u16 = 8001;

/// One subcommand: the roles it runs and the argument groups it carries
/// (`None`: it has no such options).
struct Parts<'a> {
    roles: Roles,
    shutdown: &'a ShutdownArgs,
    /// /health, /ready and /metrics of a process without the API, and its keys.
    ops: Option<&'a OpsArgs>,
    db: Option<&'a DbArgs>,
    kafka: Option<&'a KafkaArgs>,
    mongo: Option<&'a MongoArgs>,
    http: Option<&'a HttpArgs>,
    auth: Option<&'a AuthArgs>,
    saga: Option<&'a SagaArgs>,
    /// The user API client, and the port it asks when USER_API_URL is not set.
    user_api: Option<(&'a UserApiClientArgs, u16)>,
    balance: Option<&'a BalanceArgs>,
    relay: Option<&'a RelayArgs>,
    /// The stub user API, and the address it listens on.
    stub: Option<(IpAddr, &'a StubArgs)>,
}

impl<'a> Parts<'a> {
    /// A subcommand running `roles` with no argument group but the shutdown's.
    fn new(roles: Roles, shutdown: &'a ShutdownArgs) -> Self {
        Self {
            roles,
            shutdown,
            ops: None,
            db: None,
            kafka: None,
            mongo: None,
            http: None,
            auth: None,
            saga: None,
            user_api: None,
            balance: None,
            relay: None,
            stub: None,
        }
    }

    /// The run: each group carried sets its part of the settings. The groups
    /// are checked in this order, so the first bad setting is the one named.
    fn plan(&self) -> Result<(Roles, Settings), String> {
        let mut s = Settings::default();
        self.shutdown.apply(&mut s);
        if let Some(ops) = self.ops {
            ops.apply(&mut s)?;
        }
        if let Some(db) = self.db {
            db.apply(&mut s)?;
        }
        if let Some(kafka) = self.kafka {
            kafka.apply(&mut s)?;
        }
        if let Some(mongo) = self.mongo {
            s.mongo = mongo.settings()?;
        }
        if let Some(http) = self.http {
            http.apply(&mut s);
        }
        if let Some(auth) = self.auth {
            auth.apply(&mut s)?;
        }
        if let Some(saga) = self.saga {
            saga.apply(&mut s);
        }
        if let Some((user_api, default_port)) = self.user_api {
            s.user_api = user_api.settings(default_port);
        }
        if let Some(balance) = self.balance {
            s.balance_limit = balance.balance_limit;
        }
        if let Some(relay) = self.relay {
            s.relay = relay.settings();
        }
        if let Some((host, stub)) = self.stub {
            s.stub_addr = SocketAddr::new(host, stub.user_api_port);
        }
        Ok((self.roles, s))
    }
}

impl Command {
    /// What this subcommand runs, and with which settings.
    pub fn plan(&self) -> Result<(Roles, Settings), String> {
        self.parts()?.plan()
    }

    /// This subcommand's roles and argument groups; one that runs no
    /// components is refused.
    fn parts(&self) -> Result<Parts<'_>, String> {
        Ok(match self {
            Command::All(a) => Parts {
                db: Some(&a.db),
                kafka: Some(&a.kafka),
                mongo: Some(&a.mongo),
                http: Some(&a.http),
                auth: Some(&a.auth),
                saga: Some(&a.saga),
                // With its stub, `all` asks the stub unless USER_API_URL says otherwise.
                user_api: Some((
                    &a.user_api,
                    if a.user_api_stub {
                        a.stub.user_api_port
                    } else {
                        DEFAULT_USER_API_PORT
                    },
                )),
                balance: Some(&a.balance),
                relay: Some(&a.relay),
                stub: Some((a.http.host, &a.stub)),
                ..Parts::new(Roles::all(a.user_api_stub), &a.shutdown)
            },
            Command::Api(a) => Parts {
                db: Some(&a.db),
                kafka: Some(&a.kafka),
                mongo: Some(&a.mongo),
                http: Some(&a.http),
                auth: Some(&a.auth),
                relay: Some(&a.relay),
                ..Parts::new(
                    Roles {
                        api: true,
                        relay: a.embedded.relay_embedded,
                        ..Roles::none()
                    },
                    &a.shutdown,
                )
            },
            Command::Orchestrator(a) => Parts {
                ops: Some(&a.ops),
                db: Some(&a.db),
                kafka: Some(&a.kafka),
                mongo: Some(&a.mongo),
                saga: Some(&a.saga),
                relay: Some(&a.relay),
                ..Parts::new(
                    Roles {
                        orchestrator: true,
                        relay: a.embedded.relay_embedded,
                        ..Roles::none()
                    },
                    &a.shutdown,
                )
            },
            Command::UserValidator(a) => Parts {
                ops: Some(&a.ops),
                kafka: Some(&a.kafka),
                user_api: Some((&a.user_api, DEFAULT_USER_API_PORT)),
                ..Parts::new(
                    Roles {
                        user_validator: true,
                        ..Roles::none()
                    },
                    &a.shutdown,
                )
            },
            Command::BalanceValidator(a) => Parts {
                ops: Some(&a.ops),
                kafka: Some(&a.kafka),
                balance: Some(&a.balance),
                ..Parts::new(
                    Roles {
                        balance_validator: true,
                        ..Roles::none()
                    },
                    &a.shutdown,
                )
            },
            Command::Relay(a) => Parts {
                ops: Some(&a.ops),
                db: Some(&a.db),
                kafka: Some(&a.kafka),
                mongo: Some(&a.mongo),
                relay: Some(&a.relay),
                ..Parts::new(
                    Roles {
                        relay: true,
                        ..Roles::none()
                    },
                    &a.shutdown,
                )
            },
            Command::UserApi(a) => Parts {
                stub: Some((a.host, &a.stub)),
                ..Parts::new(
                    Roles {
                        user_api_stub: true,
                        ..Roles::none()
                    },
                    &a.shutdown,
                )
            },
            Command::Migrate(_) => return Err("migrate runs no components".into()),
            Command::Probe(_) => return Err("probe runs no components".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::config::Cli;
    use crate::startup::{Roles, Settings};

    /// The plan of `ordersaga <args>`.
    fn plan(args: &[&str]) -> Result<(Roles, Settings), String> {
        let argv = std::iter::once("ordersaga").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().command.plan()
    }

    #[test]
    fn all_with_its_stub_asks_the_stub_unless_told_otherwise() {
        let url = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            cli.command.plan().unwrap().1.user_api.base_url
        };
        assert_eq!(
            url(&["ordersaga", "all", "--user-api-port", "9301"]),
            "http://127.0.0.1:9301"
        );
        assert_eq!(
            url(&[
                "ordersaga",
                "all",
                "--user-api-port",
                "9301",
                "--user-api-url",
                "http://users:80"
            ]),
            "http://users:80"
        );
        assert_eq!(
            url(&["ordersaga", "user-validator"]),
            "http://127.0.0.1:8001"
        );
    }

    /// `Settings::default()` fills in what a role leaves unset, so its values
    /// must be the command line's defaults: a default changed in one place
    /// only would make the roles disagree about it.
    #[test]
    fn settings_default_is_what_all_runs_with_when_told_nothing() {
        // The environment cannot interfere (the local stack's sets some of these).
        let cmd = Cli::command().mut_subcommand("all", |all| all.mut_args(|arg| arg.env(None)));
        let matches = cmd.try_get_matches_from(["ordersaga", "all"]).unwrap();
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        let (_, planned) = cli.command.plan().unwrap();
        let (planned, default) = (
            format!("{planned:#?}"),
            format!("{:#?}", Settings::default()),
        );
        let differ: Vec<_> = planned
            .lines()
            .zip(default.lines())
            .filter(|(p, d)| p != d)
            .collect();
        assert!(
            differ.is_empty() && planned.lines().count() == default.lines().count(),
            "(`all`, Settings::default()) differ: {differ:#?}"
        );
    }

    #[test]
    fn all_plans_every_role() {
        let (roles, _) = plan(&["all"]).unwrap();
        assert!(
            roles.api
                && roles.relay
                && roles.orchestrator
                && roles.user_validator
                && roles.balance_validator
        );
    }

    #[test]
    fn each_subcommand_runs_its_own_roles() {
        let roles = |args: &[&str]| plan(args).map(|(roles, _)| roles);
        let none = Roles::none();
        for (args, expected) in [
            (&["all", "--user-api-stub", "false"][..], Roles::all(false)),
            (
                &["api", "--relay-embedded", "true"],
                Roles {
                    api: true,
                    relay: true,
                    ..none
                },
            ),
            (
                &["api", "--relay-embedded", "false"],
                Roles { api: true, ..none },
            ),
            (
                &["orchestrator", "--relay-embedded", "true"],
                Roles {
                    orchestrator: true,
                    relay: true,
                    ..none
                },
            ),
            (
                &["user-validator"],
                Roles {
                    user_validator: true,
                    ..none
                },
            ),
            (
                &["balance-validator"],
                Roles {
                    balance_validator: true,
                    ..none
                },
            ),
            (
                &["relay"],
                Roles {
                    relay: true,
                    ..none
                },
            ),
            (
                &["user-api"],
                Roles {
                    user_api_stub: true,
                    ..none
                },
            ),
        ] {
            assert_eq!(roles(args), Ok(expected), "{args:?}");
        }
        for (args, refusal) in [
            (&["migrate"][..], "migrate runs no components"),
            (
                &["probe", "http://127.0.0.1:9/ready"],
                "probe runs no components",
            ),
        ] {
            assert_eq!(roles(args), Err(refusal.to_owned()), "{args:?}");
        }
    }

    #[test]
    fn the_stub_listens_where_its_subcommand_says() {
        let stub = |args: &[&str]| plan(args).unwrap().1.stub_addr.to_string();
        let args = ["--host", "127.0.0.1", "--user-api-port", "9302"];
        assert_eq!(stub(&[&["user-api"][..], &args].concat()), "127.0.0.1:9302");
        assert_eq!(stub(&[&["all"][..], &args].concat()), "127.0.0.1:9302");
    }
}
