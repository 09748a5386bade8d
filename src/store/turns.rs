//! Commands on one stream take turns in this process. The command path is optimistic (fold,
//! decide, append at the version folded), which is right across processes and streams, but
//! a burst of commands on one stream — apps exchanging a user's codes at once, tabs
//! refreshing together — made all but one lose each round, and after two losses a command
//! gave up as contended. Taking turns per stream, a command decides on the state the one
//! before it left, so within a process only writers outside the command path can make an
//! append lose its race.
//!
//! Only one stream's commands wait for each other: commands on other streams still land in
//! the same group commit.

use idledger_domain::StreamId;
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// One lock per stream with a command under way (none kept for idle streams).
#[derive(Default)]
pub struct StreamTurns {
    held: Mutex<FxHashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A stream's turn, held until dropped (a cancelled command gives it up too).
pub struct Turn<'a> {
    turns: &'a StreamTurns,
    stream: StreamId,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl StreamTurns {
    /// Waits for `stream`'s turn.
    pub async fn take(&self, stream: &StreamId) -> Turn<'_> {
        let lock = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(stream.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        Turn {
            turns: self,
            stream: stream.clone(),
            lock,
            guard: Some(guard),
        }
    }

    /// Streams with a command under way or waiting.
    pub fn busy(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.turns.held.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and this one: no one else waits, and no one can start to
        // without the map's lock, held here.
        if Arc::strong_count(&self.lock) == 2 {
            held.remove(&self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_stream_takes_turns_and_leaves_nothing_behind() {
        let turns = Arc::new(StreamTurns::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let stream = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(7)));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (turns, inside, most, stream) =
                    (turns.clone(), inside.clone(), most.clone(), stream.clone());
                tokio::spawn(async move {
                    let _turn = turns.take(&stream).await;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(turns.busy(), 0);
        // Other streams do not wait for a held one.
        let _held = turns.take(&stream).await;
        let other = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(8)));
        let taken =
            tokio::time::timeout(std::time::Duration::from_secs(1), turns.take(&other)).await;
        assert!(taken.is_ok());
    }
}
