//! Folded stream states kept between commands. A decision needs its stream folded; without
//! this, every command decoded and folded the whole stream, so a user's next sign-in or
//! token cost more with every one before it. With it, a command folds only what was
//! appended since the stream was last decided here (usually nothing: this process wrote it).
//!
//! **A snapshot is only ever a fold of committed events at a stated version**: it is put
//! after a read or after an append the log acknowledged, and a reader folds everything
//! after that version before deciding, so other writers' appends are never missed.

use idledger_domain::{Envelope, Event, StreamId};
use rustc_hash::FxHashMap;
use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Streams whose states are kept at most (a full cache forgets one to take one).
pub const DEFAULT_CAPACITY: usize = 16_384;

/// A stream, the state type and the fold that made it: two folds of one stream are two
/// entries.
type Key = (StreamId, TypeId, usize);

struct Entry {
    version: u64,
    state: Arc<dyn Any + Send + Sync>,
}

/// Folded states by stream, bounded.
pub struct Snapshots {
    entries: Mutex<FxHashMap<Key, Entry>>,
    capacity: AtomicUsize,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots::new(DEFAULT_CAPACITY)
    }
}

/// How a command folds its stream: the events alone, or with what the log recorded of
/// each (the rotation protocol measures its windows from commit times).
pub enum Fold<S> {
    /// By event.
    Events(fn(S, &Event) -> S),
    /// By envelope.
    Envelopes(fn(S, &Envelope) -> S),
}

impl<S> Clone for Fold<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Fold<S> {}

impl<S> Fold<S> {
    /// `s` with `e` folded in.
    pub fn apply(self, s: S, e: &Envelope) -> S {
        match self {
            Fold::Events(f) => f(s, &e.event),
            Fold::Envelopes(f) => f(s, e),
        }
    }

    fn id(self) -> usize {
        match self {
            Fold::Events(f) => f as usize,
            Fold::Envelopes(f) => f as usize,
        }
    }
}

fn key<S: 'static>(stream: &StreamId, fold: Fold<S>) -> Key {
    (stream.clone(), TypeId::of::<S>(), fold.id())
}

impl Snapshots {
    /// A cache of at most `capacity` streams (0 keeps nothing).
    pub fn new(capacity: usize) -> Snapshots {
        Snapshots {
            entries: Mutex::new(FxHashMap::default()),
            capacity: AtomicUsize::new(capacity),
        }
    }

    /// Keeps at most `capacity` streams from now on (forgetting all when it shrinks).
    pub fn set_capacity(&self, capacity: usize) {
        if capacity < self.capacity.swap(capacity, Ordering::Relaxed) {
            self.entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    /// The state `fold` made of `stream` and the version it reached, if kept.
    pub fn get<S: Clone + Send + Sync + 'static>(
        &self,
        stream: &StreamId,
        fold: Fold<S>,
    ) -> Option<(u64, S)> {
        let kept = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let e = entries.get(&key(stream, fold))?;
            (e.version, e.state.clone())
        };
        // Cloned outside the lock: a big state does not hold up other streams.
        let state = kept.1.downcast::<S>().ok()?;
        Some((kept.0, (*state).clone()))
    }

    /// Keeps `state`, the fold of `stream` through `version`, unless a later one is kept.
    pub fn put<S: Send + Sync + 'static>(
        &self,
        stream: &StreamId,
        fold: Fold<S>,
        version: u64,
        state: S,
    ) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        if capacity == 0 {
            return;
        }
        let k = key(stream, fold);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.get(&k).is_some_and(|e| e.version >= version) {
            return;
        }
        if entries.len() >= capacity && !entries.contains_key(&k) {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(
            k,
            Entry {
                version,
                state: Arc::new(state),
            },
        );
    }

    /// Streams kept now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::decide::tokens::{evolve, TokensState};
    use idledger_domain::events::TokenRevoked;
    use idledger_domain::TokenId;

    fn count(n: u64, _: &Event) -> u64 {
        n + 1
    }

    #[test]
    fn a_state_is_kept_per_stream_and_fold_and_never_goes_back() {
        let s = Snapshots::new(2);
        let (a, b, c) = (
            StreamId::tokens(),
            StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(1))),
            StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(2))),
        );
        assert_eq!(s.get(&a, Fold::Events(count)), None);
        s.put(&a, Fold::Events(count), 3, 3u64);
        assert_eq!(s.get(&a, Fold::Events(count)), Some((3, 3)));
        // Another fold of the same stream is another entry.
        assert_eq!(s.get::<TokensState>(&a, Fold::Events(evolve)), None);
        // An older fold does not replace a newer one.
        s.put(&a, Fold::Events(count), 2, 2u64);
        assert_eq!(s.get(&a, Fold::Events(count)), Some((3, 3)));
        s.put(&b, Fold::Events(count), 1, 1u64);
        // Full: taking a third forgets one of the others.
        s.put(&c, Fold::Events(count), 5, 5u64);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(&c, Fold::Events(count)), Some((5, 5)));
        let revoked: Event = TokenRevoked {
            token_id: TokenId(uuid::Uuid::nil()),
        }
        .into();
        let folded = evolve(TokensState::default(), &revoked);
        s.put(&a, Fold::Events(evolve), 1, folded.clone());
        assert_eq!(s.get(&a, Fold::Events(evolve)), Some((1, folded)));
        assert_eq!(Snapshots::new(0).get(&a, Fold::Events(count)), None);
    }
}
