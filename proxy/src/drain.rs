//! Graceful shutdown: one signal, many listeners and connections that finish their work first.
//!
//! A [`Drain`] is held by whoever decides to stop (a signal handler, `/shutdown`); every listener
//! and connection holds a [`Watch`]. On [`Drain::drain`], listeners stop accepting and connections
//! finish what they are doing; `drain` returns once every [`Watch`] (and every [`Retain`] taken
//! from one) has been dropped, so the process exits only when no request is cut off.

use tokio::sync::{mpsc, watch};

/// The stopping side.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    // Every Watch holds a clone of the sender; `recv` returns None once all are dropped.
    done: mpsc::Receiver<()>,
}

/// The working side: cheap to clone, one per listener or connection.
#[derive(Clone, Debug)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

/// Keeps a drain waiting while held, for work that outlives the `Watch` it came from.
#[derive(Clone, Debug)]
pub struct Retain {
    _alive: mpsc::Sender<()>,
}

/// A new drain and its first watch.
pub fn channel() -> (Drain, Watch) {
    let (signal, signal_rx) = watch::channel(false);
    let (alive, done) = mpsc::channel(1);
    (
        Drain { signal, done },
        Watch {
            signal: signal_rx,
            _alive: alive,
        },
    )
}

impl Drain {
    /// Signals every watch and waits until all of them are gone.
    pub async fn drain(mut self) {
        let _ = self.signal.send(true);
        // No message is ever sent: `recv` resolves to None when the last sender is dropped.
        while self.done.recv().await.is_some() {}
    }
}

impl Watch {
    /// Resolves when draining starts (at once if it already has).
    pub async fn signaled(&mut self) {
        // An error means the Drain was dropped without draining: treat that as a signal too.
        let _ = self.signal.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// A guard that keeps the drain waiting without watching for the signal.
    pub fn retain(&self) -> Retain {
        Retain {
            _alive: self._alive.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_every_watch_and_retain() {
        let (drain, watch) = channel();
        let mut conn = watch.clone();
        let retained = watch.retain();
        drop(watch);
        let finished = tokio::spawn(async move {
            conn.signaled().await;
            // The connection finishes its request after the signal.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(conn);
        });
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(retained);
        });
        let start = tokio::time::Instant::now();
        drain.drain().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        finished.await.unwrap();
        release.await.unwrap();
    }

    #[tokio::test]
    async fn a_late_watch_sees_the_signal_at_once() {
        let (drain, watch) = channel();
        let mut late = watch.clone();
        drop(watch);
        let draining = tokio::spawn(drain.drain());
        late.signaled().await;
        assert!(late.is_draining());
        drop(late);
        draining.await.unwrap();
    }
}
