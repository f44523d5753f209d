//! Readiness: can this process reach what it needs?

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::ports::{EventLog, MessagePublisher, OrderStore};

/// A dependency to check.
#[derive(Clone)]
pub enum Dependency {
    Postgres(Arc<dyn OrderStore>),
    Kafka(Arc<dyn MessagePublisher>),
    MongoDb(Arc<dyn EventLog>),
}

impl Dependency {
    pub fn name(&self) -> &'static str {
        match self {
            Dependency::Postgres(_) => "postgres",
            Dependency::Kafka(_) => "kafka",
            Dependency::MongoDb(_) => "mongodb",
        }
    }

    async fn check(&self) -> Result<(), String> {
        match self {
            Dependency::Postgres(s) => s.ping().await.map_err(|e| e.to_string()),
            Dependency::Kafka(p) => p.ping().await.map_err(|e| e.to_string()),
            Dependency::MongoDb(l) => l.ping().await.map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadinessReport {
    pub draining: bool,
    /// Each dependency and what went wrong with it, if anything.
    pub checks: Vec<(&'static str, Result<(), String>)>,
}

impl ReadinessReport {
    pub fn ready(&self) -> bool {
        !self.draining && self.checks.iter().all(|(_, r)| r.is_ok())
    }
}

pub struct Readiness {
    dependencies: Vec<Dependency>,
    draining: AtomicBool,
    timeout: Duration,
}

impl Readiness {
    pub fn new(dependencies: Vec<Dependency>, timeout: Duration) -> Self {
        Self {
            dependencies,
            draining: AtomicBool::new(false),
            timeout,
        }
    }

    /// From now on the process reports not ready, so load balancers stop sending work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Checks every dependency at once, each within the timeout.
    pub async fn check(&self) -> ReadinessReport {
        let checks = futures::future::join_all(self.dependencies.iter().map(|d| async move {
            let result = match tokio::time::timeout(self.timeout, d.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
            };
            (d.name(), result)
        }))
        .await;
        ReadinessReport {
            draining: self.draining.load(Ordering::SeqCst),
            checks,
        }
    }
}
