//! Catch-up subscriptions: history from the store, then live batches, stitched by position.

use super::{EventLog, StoreError};
use idledger_domain::Envelope;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// History is read from the store in chunks of this many envelopes.
const HISTORY_CHUNK: usize = 4096;

/// A catch-up subscription. Created before its first read, so no batch published after
/// creation can be missed; a batch already covered by history is skipped by position.
pub struct Subscription {
    log: Arc<dyn EventLog>,
    live: tokio::sync::broadcast::Receiver<Arc<[Envelope]>>,
    next: u64,
    buffer: VecDeque<Envelope>,
}

impl Subscription {
    pub(super) fn new(log: Arc<dyn EventLog>, from: u64) -> Self {
        // Subscribe to live batches first: anything committed after this point is either
        // in the store when history is read, or in this receiver, or both.
        let live = log.live();
        Subscription {
            log,
            live,
            next: from.max(1),
            buffer: VecDeque::new(),
        }
    }

    /// The position the next envelope will have.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// The next envelope.
    pub async fn next(&mut self) -> Result<Envelope, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.next = e.position + 1;
                return Ok(e);
            }
            self.fill().await?;
        }
    }

    /// The next envelopes available without waiting further, at least one, at most `max`.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, StoreError> {
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        let n = self.buffer.len().min(max.max(1));
        let out: Vec<Envelope> = self.buffer.drain(..n).collect();
        if let Some(last) = out.last() {
            self.next = last.position + 1;
        }
        Ok(out)
    }

    /// Fills the (empty) buffer with at least one envelope.
    async fn fill(&mut self) -> Result<(), StoreError> {
        // The buffer holds positions next, next+1, ...; `expect` is the one after it.
        let expect = |s: &Self| s.next + s.buffer.len() as u64;
        loop {
            if !self.buffer.is_empty() {
                return Ok(());
            }
            if self.next <= self.log.head().position {
                self.buffer
                    .extend(self.log.read_all(self.next, HISTORY_CHUNK)?);
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    for e in batch.iter() {
                        let want = expect(self);
                        if e.position == want {
                            self.buffer.push_back(e.clone());
                        } else if e.position > want {
                            // A gap means we missed a batch: drop this one and read history.
                            self.buffer.clear();
                            break;
                        }
                    }
                }
                // Too slow for the channel: history has everything we skipped.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}
