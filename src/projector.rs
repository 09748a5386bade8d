//! The live projector: folds committed events into the shared projections, in log order.

use crate::store::{subscribe, EventLog, StoreError};
use idledger_projections::Projections;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Envelopes applied under one write lock.
const APPLY_CHUNK: usize = 1024;

/// Handle to the live projections.
#[derive(Clone)]
pub struct Projector {
    state: Arc<RwLock<Projections>>,
    position: watch::Receiver<u64>,
}

/// The projector did not reach a position in time.
#[derive(Debug, thiserror::Error)]
#[error("projections have not reached position {wanted} (at {reached})")]
pub struct NotReached {
    /// The position waited for.
    pub wanted: u64,
    /// The position reached.
    pub reached: u64,
}

impl Projector {
    /// Folds the whole log, then keeps following it on a background task.
    pub fn start(log: Arc<dyn EventLog>) -> Self {
        let state = Arc::new(RwLock::new(Projections::new()));
        let (tx, position) = watch::channel(0);
        let task_state = state.clone();
        // The lag of history folded at start says nothing about the live log.
        let start_head = log.head().position;
        tokio::spawn(async move {
            let mut sub = subscribe(log, 1);
            loop {
                match sub.next_batch(APPLY_CHUNK).await {
                    Ok(batch) => {
                        let last = batch.last().map(|e| e.position);
                        {
                            let mut p = task_state.write().unwrap_or_else(|e| e.into_inner());
                            for env in &batch {
                                p.apply(env);
                            }
                        }
                        if let Some(env) = batch.last().filter(|e| e.position > start_head) {
                            crate::metrics::applied(env.recorded_at);
                        }
                        if let Some(last) = last {
                            tx.send_replace(last);
                        }
                    }
                    Err(StoreError::Closed) => return,
                    Err(e) => {
                        // A damaged record stops projection: queries keep answering from
                        // the state before it, and the error is loud.
                        tracing::error!(error = %e, "projector stopped");
                        return;
                    }
                }
            }
        });
        Projector { state, position }
    }

    /// The position the projections have reached.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until the projections include `position`, at most `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), NotReached> {
        let mut rx = self.position.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NotReached {
                wanted: position,
                reached: self.position(),
            }),
        }
    }

    /// A consistent read of the projections. Hold it briefly: the projector waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Projections> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}
