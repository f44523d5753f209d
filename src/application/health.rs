//! Readiness: can this process reach what it needs, and has every consumer
//! of the process been given its share of the work?

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::ports::{EventLog, MessagePublisher, OrderStore};

/// A dependency to check, reported under the name the wiring gives it
/// (`/ready` lists `postgres`, `kafka`, `mongodb`: the names operators know).
#[derive(Clone)]
pub struct Dependency {
    name: &'static str,
    port: Port,
}

#[derive(Clone)]
enum Port {
    Store(Arc<dyn OrderStore>),
    Broker(Arc<dyn MessagePublisher>),
    EventLog(Arc<dyn EventLog>),
}

impl Dependency {
    /// The order store, checked with [`OrderStore::ping`].
    pub fn store(name: &'static str, store: Arc<dyn OrderStore>) -> Self {
        Self {
            name,
            port: Port::Store(store),
        }
    }

    /// The message broker, checked with [`MessagePublisher::ping`].
    pub fn broker(name: &'static str, publisher: Arc<dyn MessagePublisher>) -> Self {
        Self {
            name,
            port: Port::Broker(publisher),
        }
    }

    /// The event log, checked with [`EventLog::ping`].
    pub fn event_log(name: &'static str, log: Arc<dyn EventLog>) -> Self {
        Self {
            name,
            port: Port::EventLog(log),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    async fn check(&self) -> Result<(), String> {
        match &self.port {
            Port::Store(s) => s.ping().await.map_err(|e| e.to_string()),
            Port::Broker(p) => p.ping().await.map_err(|e| e.to_string()),
            Port::EventLog(l) => l.ping().await.map_err(|e| e.to_string()),
        }
    }
}

/// Whether a message consumer has joined its group and been assigned its
/// partitions (possibly none, when the group has more members than
/// partitions). Until then the messages it will handle wait, so a process is
/// not ready before each of its consumers has been assigned once; later
/// rebalances do not make it unready again.
#[derive(Debug, Default)]
pub struct ConsumerAssignment {
    assigned: AtomicBool,
}

impl ConsumerAssignment {
    pub fn mark_assigned(&self) {
        self.assigned.store(true, Ordering::SeqCst);
    }

    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::SeqCst)
    }
}

/// The name the consumers' check is reported under.
pub const CONSUMERS_CHECK: &str = "consumers";

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
    /// Each consumer of the process, by component name.
    consumers: Vec<(&'static str, Arc<ConsumerAssignment>)>,
    draining: AtomicBool,
    timeout: Duration,
}

impl Readiness {
    pub fn new(dependencies: Vec<Dependency>, timeout: Duration) -> Self {
        Self {
            dependencies,
            consumers: Vec::new(),
            draining: AtomicBool::new(false),
            timeout,
        }
    }

    /// Also waits for these consumers' first partition assignment.
    pub fn with_consumers(
        mut self,
        consumers: Vec<(&'static str, Arc<ConsumerAssignment>)>,
    ) -> Self {
        self.consumers = consumers;
        self
    }

    /// The consumers' check: fails naming those not assigned yet.
    fn consumers_check(&self) -> Option<(&'static str, Result<(), String>)> {
        if self.consumers.is_empty() {
            return None;
        }
        let waiting: Vec<&str> = self
            .consumers
            .iter()
            .filter(|(_, a)| !a.is_assigned())
            .map(|(name, _)| *name)
            .collect();
        let result = if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "waiting for a partition assignment: {}",
                waiting.join(", ")
            ))
        };
        Some((CONSUMERS_CHECK, result))
    }

    /// From now on the process reports not ready, so load balancers stop sending work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Checks every dependency at once, each within the timeout.
    pub async fn check(&self) -> ReadinessReport {
        let mut checks = futures::future::join_all(self.dependencies.iter().map(|d| async move {
            let result = match tokio::time::timeout(self.timeout, d.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
            };
            (d.name(), result)
        }))
        .await;
        checks.extend(self.consumers_check());
        ReadinessReport {
            draining: self.draining.load(Ordering::SeqCst),
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_ready_until_every_consumer_was_assigned_once() {
        let (a, b) = (
            Arc::new(ConsumerAssignment::default()),
            Arc::new(ConsumerAssignment::default()),
        );
        let readiness = Readiness::new(vec![], Duration::from_secs(1)).with_consumers(vec![
            ("orchestrator", a.clone()),
            ("user-validator", b.clone()),
        ]);
        let report = readiness.check().await;
        assert!(!report.ready());
        assert_eq!(
            report.checks,
            [(
                CONSUMERS_CHECK,
                Err("waiting for a partition assignment: orchestrator, user-validator".into())
            )]
        );
        a.mark_assigned();
        let report = readiness.check().await;
        assert!(!report.ready());
        assert_eq!(
            report.checks[0].1,
            Err("waiting for a partition assignment: user-validator".into())
        );
        b.mark_assigned();
        assert!(readiness.check().await.ready());
    }

    #[tokio::test]
    async fn a_process_without_consumers_has_no_consumer_check() {
        let readiness = Readiness::new(vec![], Duration::from_secs(1));
        assert!(readiness.check().await.checks.is_empty());
    }
}
