//! The queue behind group commit: callers queue jobs, and a few writer tasks
//! each take every job waiting (up to a bound) and write them together. Saga
//! decisions (`saga.rs`) and new orders (`orders.rs`) are written this way.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// The receiving end, shared by the writers.
pub(super) type Jobs<J> = Arc<tokio::sync::Mutex<mpsc::Receiver<J>>>;

/// Jobs waiting for a writer, at most `capacity` of them. The writers start
/// with the first job (inside the runtime) and stop when the queue is dropped.
pub(super) struct GroupQueue<J> {
    jobs: mpsc::Sender<J>,
    idle: Mutex<Option<mpsc::Receiver<J>>>,
}

/// Why a job was not queued; the job comes back.
pub(super) enum NotQueued<J> {
    /// `capacity` jobs are already waiting.
    Full(J),
    /// The writers have stopped.
    Stopped(J),
}

impl<J> GroupQueue<J> {
    pub(super) fn new(capacity: usize) -> Self {
        let (jobs, rx) = mpsc::channel(capacity.max(1));
        Self {
            jobs,
            idle: Mutex::new(Some(rx)),
        }
    }

    /// Whether the writers have started (a job was submitted).
    pub(super) fn started(&self) -> bool {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Queues `job` unless the queue is full; the first call hands the
    /// receiving end to `start`, which spawns the writers.
    pub(super) fn submit(&self, job: J, start: impl FnOnce(Jobs<J>)) -> Result<(), NotQueued<J>> {
        if let Some(rx) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            start(Arc::new(tokio::sync::Mutex::new(rx)));
        }
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(job) => NotQueued::Full(job),
            mpsc::error::TrySendError::Closed(job) => NotQueued::Stopped(job),
        })
    }
}

/// Waits for a job, then takes every other one already waiting, up to `max`
/// in all; `None` once the queue is gone.
pub(super) async fn next_batch<J>(jobs: &Jobs<J>, max: usize) -> Option<Vec<J>> {
    let mut rx = jobs.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_gives_the_job_back_instead_of_growing() {
        let queue = GroupQueue::new(2);
        let kept = Mutex::new(None);
        // Writers that take nothing yet: the jobs wait in the queue.
        let start = |jobs: Jobs<u32>| *kept.lock().unwrap() = Some(jobs);
        assert!(queue.submit(1, start).is_ok());
        assert!(queue.submit(2, |_| unreachable!("started once")).is_ok());
        assert!(matches!(
            queue.submit(3, |_| unreachable!()),
            Err(NotQueued::Full(3))
        ));
        // Once a writer takes what waits, there is room again.
        let jobs = kept.lock().unwrap().take().unwrap();
        assert_eq!(next_batch(&jobs, 10).await, Some(vec![1, 2]));
        assert!(queue.submit(4, |_| unreachable!()).is_ok());
        drop(jobs);
        assert!(matches!(
            queue.submit(5, |_| unreachable!()),
            Err(NotQueued::Stopped(5))
        ));
    }
}
