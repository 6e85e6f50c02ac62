//! Stopping tasks, and waiting until they have finished: graceful drain.
//!
//! [`channel`] returns a [`Signal`] (held by whoever decides to shut down) and
//! a [`Watch`] that every listener, connection and background task clones.
//! Listeners stop accepting when the watch fires, connections finish their
//! in-flight work and then drop their clone; [`Signal::drain`] completes when
//! the last clone is gone. [`Signal::stop`] fires the watches without
//! waiting for anyone (a server that stops its accept loop and awaits its
//! own tasks).

use tokio::sync::{mpsc, watch};

/// A new signal and the first of its watches.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    (Signal { tx, done_rx }, Watch { rx, _done: done_tx })
}

/// Held by whoever decides to stop.
pub struct Signal {
    tx: watch::Sender<bool>,
    done_rx: mpsc::Receiver<std::convert::Infallible>,
}

/// Held (cloned) by everything that must stop: its clones still alive are
/// what [`Signal::drain`] waits for.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    _done: mpsc::Sender<std::convert::Infallible>,
}

impl Signal {
    /// Tells every watcher to stop, without waiting for them.
    pub fn stop(self) {
        let _ = self.tx.send(true);
    }

    /// Tells every watcher to drain and waits until all of them are dropped.
    pub async fn drain(mut self) {
        let _ = self.tx.send(true);
        // Nothing is ever sent: `recv` returns once every sender is dropped.
        while self.done_rx.recv().await.is_some() {}
    }
}

impl Watch {
    /// Completes once draining has begun.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the signal was dropped: treat that as a drain too.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_every_watch_to_finish() {
        let (signal, watch) = channel();
        let mut tasks = Vec::new();
        for i in 1..=3u64 {
            let w = watch.clone();
            tasks.push(tokio::spawn(async move {
                w.signaled().await;
                assert!(w.is_draining());
                // in-flight work that takes a while to finish
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
            }));
        }
        assert!(!watch.is_draining());
        drop(watch);
        let start = tokio::time::Instant::now();
        signal.drain().await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        for t in tasks {
            assert!(t.is_finished());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drain_with_no_watchers_is_immediate() {
        let (signal, watch) = channel();
        drop(watch);
        tokio::time::timeout(Duration::from_millis(1), signal.drain())
            .await
            .expect("no watcher left: drain completes at once");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_releases_watchers_without_waiting_for_them() {
        let (signal, watch) = channel();
        let held = watch.clone();
        signal.stop();
        tokio::time::timeout(Duration::from_millis(1), watch.signaled())
            .await
            .expect("stopped");
        assert!(held.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_signal_releases_watchers() {
        let (signal, watch) = channel();
        drop(signal);
        tokio::time::timeout(Duration::from_millis(1), watch.signaled())
            .await
            .expect("dropped signal counts as drain");
    }
}
