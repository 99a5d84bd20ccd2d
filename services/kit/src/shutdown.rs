//! Graceful shutdown: one signal that every part of a server watches, and a tracker for the
//! work that must finish before the process exits.
//!
//! The order of a stop is fixed in [`crate::app`]: readiness turns false, listeners stop
//! accepting, in-flight requests and tracked tasks get until the `shutdown.grace` deadline,
//! telemetry is flushed, the process exits 0.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cloneable handle on the process's stop signal and its tracked in-flight work.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything to stop. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether a stop has been asked for.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once a stop has been asked for.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// A token cancelled with the shutdown, for loops that select on it.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs `work` as tracked in-flight work: shutdown waits for it, up to the deadline.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// How many tracked tasks are still running.
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Stops accepting new tracked work and waits for the running work to finish.
    pub(crate) async fn drain_tracked(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn stop_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tracked_work_and_trigger_reaches_clones() {
        let shutdown = Shutdown::new();
        let watcher = shutdown.clone();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        shutdown.spawn(async move {
            watcher.triggered().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = done_tx.send(());
        });
        assert_eq!(shutdown.in_flight(), 1);
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        assert!(done_rx.try_recv().is_err(), "work must still be running");
        shutdown.drain_tracked().await;
        assert!(
            done_rx.try_recv().is_ok(),
            "drain returned before the work finished"
        );
        assert_eq!(shutdown.in_flight(), 0);
    }
}
