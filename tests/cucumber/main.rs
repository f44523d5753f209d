//! Cucumber scenarios (`features/*.feature`) against the whole system: the
//! `ordersaga` binary started on free ports with its own database, topics and
//! event log. Scenarios run concurrently, each with user ids of its own.
//!
//! Most scenarios share one `ordersaga all`. Scenarios tagged `@user-api-down`
//! run against a system whose user API is unreachable, and `@restartable` ones
//! against a system of separate processes whose balance validator a step may
//! stop and start. Each system is started the first time a scenario needs it.

#[path = "../integration/common.rs"]
mod common;
mod steps;

use std::sync::Mutex;
use std::time::Duration;

use cucumber::World as _;
use cucumber::writer::Stats as _;
use futures::FutureExt as _;
use tokio::sync::OnceCell;

use common::{Api, Launcher, Process, SystemEnv, free_port};

/// A process to start: its name, its subcommand and extra variables.
type ProcessSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A running system under test.
pub struct System {
    pub api: Api,
    pub launcher: Launcher,
    /// Every process of the system, by name, so steps can stop and start them.
    pub processes: Mutex<Vec<(String, Option<Process>)>>,
}

impl System {
    async fn start(launcher: Launcher, processes: &[ProcessSpec<'_>]) -> System {
        let mut started = Vec::new();
        for (name, subcommand, extra) in processes {
            started.push((name.to_string(), Some(launcher.spawn(subcommand, extra))));
        }
        let api = launcher.api();
        api.wait_healthy(Duration::from_secs(60)).await;
        System {
            api,
            launcher,
            processes: Mutex::new(started),
        }
    }

    /// Stops (SIGKILL) the named process.
    pub fn stop(&self, name: &str) {
        let mut ps = self.processes.lock().unwrap();
        let (_, p) = ps
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("known process");
        if let Some(mut p) = p.take() {
            p.kill();
        }
    }

    /// Starts the named process again.
    pub fn start_again(&self, name: &str, subcommand: &str) {
        let mut ps = self.processes.lock().unwrap();
        let (_, p) = ps
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("known process");
        assert!(p.is_none(), "{name} is running");
        *p = Some(self.launcher.spawn(subcommand, &[]));
    }

    /// Stops every process and drops the system's databases (statics are never dropped).
    fn shut_down(&self) {
        for (_, p) in self.processes.lock().unwrap().iter_mut() {
            if let Some(mut p) = p.take() {
                p.kill();
            }
        }
        self.launcher.env.db.drop_now();
        self.launcher.env.mongo.drop_now();
    }
}

static DEFAULT: OnceCell<System> = OnceCell::const_new();
static USER_API_DOWN: OnceCell<System> = OnceCell::const_new();
static RESTARTABLE: OnceCell<System> = OnceCell::const_new();

async fn default_system() -> &'static System {
    DEFAULT
        .get_or_init(|| async {
            System::start(
                Launcher::new(SystemEnv::new().await),
                &[("all", "all", &[])],
            )
            .await
        })
        .await
}

async fn user_api_down_system() -> &'static System {
    USER_API_DOWN
        .get_or_init(|| async {
            let launcher = Launcher::new(SystemEnv::new().await)
                .set("USER_API_URL", format!("http://127.0.0.1:{}", free_port()))
                .set("USER_API_STUB", false)
                .set("USER_API_RETRIES", 1)
                .set("USER_API_TIMEOUT_MS", 200);
            System::start(launcher, &[("all", "all", &[])]).await
        })
        .await
}

async fn restartable_system() -> &'static System {
    RESTARTABLE
        .get_or_init(|| async {
            let launcher = Launcher::new(SystemEnv::new().await).set("STEP_TIMEOUT_MS", 30_000);
            System::start(
                launcher,
                &[
                    ("api", "api", &[]),
                    ("user-api", "user-api", &[]),
                    (
                        "orchestrator",
                        "orchestrator",
                        &[("RELAY_EMBEDDED", "false")],
                    ),
                    ("user-validator", "user-validator", &[]),
                    ("balance-validator", "balance-validator", &[]),
                ],
            )
            .await
        })
        .await
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "System({})", self.api.base)
    }
}

#[derive(Debug, Default, cucumber::World)]
pub struct OrderWorld {
    /// Which system the scenario runs against (set from its tags).
    system: Option<&'static System>,
    /// The scenario's user id (made unique per scenario).
    pub user: String,
    /// The last response: status and body.
    pub last: Option<(u16, serde_json::Value)>,
    /// The last order accepted (201), and when its 201 arrived.
    pub order: Option<serde_json::Value>,
    pub accepted_at: Option<std::time::Instant>,
    /// Orders this scenario placed, oldest first.
    pub placed: Vec<String>,
}

impl OrderWorld {
    pub fn system(&self) -> &'static System {
        self.system.expect("the before hook chose a system")
    }

    pub fn api(&self) -> &'static Api {
        &self.system().api
    }
}

#[tokio::main]
async fn main() {
    let result = OrderWorld::cucumber()
        .max_concurrent_scenarios(16)
        .fail_on_skipped()
        .before(|_feature, _rule, scenario, world| {
            async move {
                let tags = &scenario.tags;
                let system = if tags.iter().any(|t| t == "user-api-down") {
                    user_api_down_system().await
                } else if tags.iter().any(|t| t == "restartable") {
                    restartable_system().await
                } else {
                    default_system().await
                };
                world.system = Some(system);
            }
            .boxed_local()
        })
        .with_default_cli()
        .run(concat!(env!("CARGO_MANIFEST_DIR"), "/features"))
        .await;
    let failed = result.execution_has_failed() || result.parsing_errors() > 0;

    for cell in [&DEFAULT, &USER_API_DOWN, &RESTARTABLE] {
        if let Some(system) = cell.get() {
            system.shut_down();
        }
    }
    if failed {
        std::process::exit(1);
    }
}
