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

/// A stream's turn, held until dropped (a cancelled command gives it up too, and so does
/// one cancelled while it waits).
pub struct Turn<'a> {
    turns: &'a StreamTurns,
    stream: StreamId,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
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
        // Made before the wait, so that a waiter dropped mid-wait cleans up as a turn does.
        let mut turn = Turn {
            turns: self,
            stream: stream.clone(),
            lock: Some(lock.clone()),
            guard: None,
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
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
        drop(self.lock.take());
        // Only the map's reference left: no one holds or waits, and no one can start to
        // without the map's lock, held here. (One who lets go meanwhile looks again.)
        if held
            .get(&self.stream)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
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

    /// A command cancelled while it waits (a client that hung up) leaves nothing behind,
    /// even when the turn it waited for was given up before it was.
    #[tokio::test]
    async fn a_waiter_cancelled_mid_wait_leaves_nothing_behind() {
        use futures_util::FutureExt;
        let turns = StreamTurns::default();
        let stream = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(7)));
        let held = turns.take(&stream).await;
        let mut waiting = Box::pin(turns.take(&stream));
        assert!(waiting.as_mut().now_or_never().is_none(), "it waits");
        drop(held);
        drop(waiting);
        assert_eq!(turns.busy(), 0);
    }
}
