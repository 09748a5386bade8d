//! The live projector: folds committed events into the shared projections, in log order.

use crate::store::{subscribe, EventLog, StoreError};
use idledger_domain::Event;
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

/// The name of the domain a rotation's or a key write's event belongs to.
fn domain_of(p: &Projections, e: &Event) -> Option<String> {
    let rotation = match e {
        Event::RotationSucceeded(e) => e.rotation_id,
        Event::RotationFailed(e) => e.rotation_id,
        Event::KeyWriteQueued(e) => e.rotation_id,
        Event::KeyWriteDelivered(e) => p.key_writes.get(e.key_write_id)?.rotation_id,
        Event::KeyWriteConfirmed(e) => p.key_writes.get(e.key_write_id)?.rotation_id,
        Event::KeyWriteFailed(e) => p.key_writes.get(e.key_write_id)?.rotation_id,
        Event::KeyWriteSuperseded(e) => p.key_writes.get(e.key_write_id)?.rotation_id,
        Event::KeyWriteWrittenLate(e) => p.key_writes.get(e.key_write_id)?.rotation_id,
        _ => return None,
    };
    let domain = p.rotations.get(rotation)?.domain_id?;
    // A removed domain's name may be registered again, by another domain.
    let domain = p.domains.get(domain).filter(|d| !d.removed)?;
    Some(domain.name.clone())
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
                                // Named before the event is folded: a write it ends
                                // may leave the projections with it.
                                if env.position > start_head {
                                    crate::metrics::applied_event(&env.event, || {
                                        domain_of(&p, &env.event)
                                    });
                                }
                                p.apply(env);
                            }
                        }
                        // The batch's oldest event waited longest: sampling the newest
                        // would hide the lag exactly when the projector falls behind.
                        let live = batch.partition_point(|e| e.position <= start_head);
                        if let Some(env) = batch.get(live) {
                            crate::metrics::applied(env.recorded_at);
                        }
                        if let Some(last) = last {
                            tx.send_replace(last);
                        }
                    }
                    Err(StoreError::Closed) => return,
                    Err(e) => {
                        // A damaged record stops projection, loudly: the server then
                        // refuses every request but health, readiness and metrics (see
                        // `http::refuse_without_projections`), since no revocation after
                        // it would be seen.
                        tracing::error!(error = %e, "projector stopped");
                        return;
                    }
                }
            }
        });
        Projector { state, position }
    }

    /// Whether projection has stopped for good (a record it could not fold, or the log
    /// closed): the state it holds will not move on again.
    pub fn stopped(&self) -> bool {
        self.position.has_changed().is_err()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_log::SledEventLog;
    use crate::store::{
        AppendError, AppendRequest, Appended, Durability, ExpectedVersion, LogFuture, LogHead,
        Reader, Snapshots, StreamTurns, WriterStats,
    };
    use idledger_domain::{Envelope, StreamId};
    use tokio::sync::broadcast;

    /// A log whose history reads fail from `damaged` on, as a damaged record does.
    struct Damaged {
        log: Arc<SledEventLog>,
        damaged: u64,
    }

    impl EventLog for Damaged {
        fn append(&self, req: AppendRequest) -> LogFuture<'_, Result<Appended, AppendError>> {
            self.log.append(req)
        }
        fn head(&self) -> LogHead {
            self.log.head()
        }
        fn settle(&self) -> LogFuture<'_, Result<(), StoreError>> {
            self.log.settle()
        }
        fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
            if from + limit as u64 > self.damaged {
                return Err(StoreError::Corrupt {
                    position: self.damaged,
                    reason: "damaged for the test".into(),
                });
            }
            self.log.read_all(from, limit)
        }
        fn read_stream(
            &self,
            stream: &StreamId,
            from_version: u64,
            limit: usize,
        ) -> Result<Vec<Envelope>, StoreError> {
            self.log.read_stream(stream, from_version, limit)
        }
        fn stream_version(&self, stream: &StreamId) -> u64 {
            self.log.stream_version(stream)
        }
        fn live(&self) -> broadcast::Receiver<Arc<[Envelope]>> {
            self.log.live()
        }
        fn records(&self, from: u64) -> Reader<StoreError> {
            self.log.records(from)
        }
        fn durability(&self) -> Durability {
            self.log.durability()
        }
        fn stats(&self) -> &WriterStats {
            self.log.stats()
        }
        fn accepting(&self) -> bool {
            self.log.accepting()
        }
        fn flush(&self) -> LogFuture<'_, Result<(), StoreError>> {
            self.log.flush()
        }
        fn close(&self) -> LogFuture<'_, ()> {
            self.log.close()
        }
        fn barrier(&self) -> LogFuture<'_, ()> {
            self.log.barrier()
        }
        fn tree(&self) -> Option<Arc<crate::store::tree::LogTree>> {
            self.log.tree()
        }
        fn times_ordered(&self) -> bool {
            self.log.times_ordered()
        }
        fn snapshots(&self) -> &Snapshots {
            self.log.snapshots()
        }
        fn turns(&self) -> &StreamTurns {
            self.log.turns()
        }
    }

    #[tokio::test]
    async fn a_record_projection_cannot_fold_stops_it_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledEventLog::open(dir.path()).unwrap();
        let revoked = |n: u128| {
            idledger_domain::ProposedEvent::new(
                uuid::Uuid::from_u128(n),
                idledger_domain::Actor::System,
                idledger_domain::events::TokenRevoked {
                    token_id: idledger_domain::TokenId(uuid::Uuid::from_u128(n)),
                },
            )
        };
        log.append(AppendRequest::new(
            StreamId::tokens(),
            ExpectedVersion::Any,
            vec![revoked(1), revoked(2)],
        ))
        .await
        .unwrap();
        let sound = Projector::start(log.clone());
        sound.wait_for(2, Duration::from_secs(5)).await.unwrap();
        assert!(!sound.stopped());
        let damaged = Projector::start(Arc::new(Damaged {
            log: log.clone(),
            damaged: 1,
        }));
        let waited = damaged.wait_for(2, Duration::from_secs(5)).await;
        assert!(waited.is_err(), "a stopped projector answers at once");
        assert!(damaged.stopped());
        assert!(!sound.stopped());
    }
}
