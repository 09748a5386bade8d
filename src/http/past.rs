//! Past states kept for the next question. An auditor looks at one past point page after
//! page, or steps through history a little at a time; each answer was a fold of the whole
//! prefix. The last two states asked for are kept: the same point is answered without a
//! read, and a later one is folded on from the nearest kept state before it.
//!
//! A state folded from the start (an anchor) cost a read of the whole prefix and is copied
//! when folded on; a state folded on from another is moved forward instead (a copy costs
//! as much as folding thousands of records, and going back to a point between them is a
//! short fold from the anchor again).
//!
//! **Every state kept is a fold of committed records only**, and a prefix of the log never
//! changes, so a kept state is never stale; [`Prefix::leads_to`] decides which points it
//! can be folded on to.

use idledger_replay::{Prefix, Until};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Past states kept at once: one to page or step through, and the anchor it came from.
/// Each is as large as the live projections (130 MB at 100,000 users and as many
/// candidates), so no more.
pub const KEPT: usize = 2;

/// How long a past state no one asks for is kept.
pub const IDLE: Duration = Duration::from_secs(10 * 60);

/// The last [`KEPT`] past states asked for, most recently used first.
#[derive(Default)]
pub struct PastStates {
    kept: Mutex<Vec<Kept>>,
}

struct Kept {
    state: Arc<Prefix>,
    /// Folded from the start.
    anchor: bool,
    /// Last asked for.
    used: Instant,
}

/// Where to answer a past point from.
pub enum Start {
    /// A kept state is that point.
    Kept(Arc<Prefix>),
    /// Fold from the start.
    Scratch,
    /// Fold on from a copy of this kept anchor.
    Copy(Arc<Prefix>),
    /// Fold on from this state, no longer kept: moved when no one else holds it.
    Move(Arc<Prefix>),
}

impl Start {
    /// The state to fold on from, taken out of its `Arc` when no one else holds it. Copying
    /// takes a while: call it on a blocking thread.
    pub fn base(self) -> Prefix {
        match self {
            Start::Kept(state) | Start::Copy(state) | Start::Move(state) => {
                Arc::try_unwrap(state).unwrap_or_else(|shared| (*shared).clone())
            }
            Start::Scratch => Prefix::default(),
        }
    }

    /// True when the state it starts from is folded from the start.
    pub fn is_scratch(&self) -> bool {
        matches!(self, Start::Scratch)
    }
}

impl PastStates {
    /// The kept state that is the state at `until`, if one is.
    pub fn kept(&self, until: Until) -> Option<Arc<Prefix>> {
        match self.start_if(until, false) {
            Start::Kept(state) => Some(state),
            _ => None,
        }
    }

    /// Where the state at `until` starts from.
    pub fn start(&self, until: Until) -> Start {
        self.start_if(until, true)
    }

    fn start_if(&self, until: Until, or_fold: bool) -> Start {
        let mut kept = self.lock();
        if let Some(i) = kept.iter().position(|k| k.state.is(until)) {
            let mut hit = kept.remove(i);
            hit.used = Instant::now();
            let state = hit.state.clone();
            kept.insert(0, hit);
            return Start::Kept(state);
        }
        if !or_fold {
            return Start::Scratch;
        }
        let nearest = kept
            .iter()
            .enumerate()
            .filter(|(_, k)| k.state.leads_to(until))
            .max_by_key(|(_, k)| k.state.position())
            .map(|(i, _)| i);
        match nearest {
            None => Start::Scratch,
            Some(i) if kept[i].anchor => Start::Copy(kept[i].state.clone()),
            Some(i) => Start::Move(kept.remove(i).state),
        }
    }

    /// Keeps `state`, in front; the least recently used goes when more than [`KEPT`] are.
    /// Call it on a blocking thread: the state pushed out may take a while to drop.
    pub fn keep(&self, state: Arc<Prefix>, anchor: bool) {
        let mut kept = self.lock();
        // Two folds to one position hold the same state: the newer knows more of what
        // follows it, the anchor mark stays.
        let anchor = anchor
            || kept
                .iter()
                .any(|k| k.anchor && k.state.position() == state.position());
        kept.retain(|k| k.state.position() != state.position());
        kept.insert(
            0,
            Kept {
                state,
                anchor,
                used: Instant::now(),
            },
        );
        let keep = kept.len().min(KEPT);
        let gone = kept.split_off(keep);
        drop(kept);
        drop(gone);
    }

    /// Lets go of the states not asked for in `idle`: each holds as much memory as the
    /// live projections. Call it on a blocking thread (a drop may take a while).
    pub fn forget_idle(&self, idle: Duration) {
        let mut kept = self.lock();
        let gone: Vec<Kept> = kept.extract_if(.., |k| k.used.elapsed() >= idle).collect();
        drop(kept);
        drop(gone);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A panic while the lock was held left a list of complete states.
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every minute, lets go of the states no one asked for in [`IDLE`] (see
/// [`PastStates::forget_idle`]), until the server that holds `past` is gone.
pub fn keep_forgetting(past: Arc<PastStates>) {
    let past = Arc::downgrade(&past);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(past) = past.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || past.forget_idle(IDLE)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: u64) -> Arc<Prefix> {
        let mut state = Prefix::default();
        state.projections.position = position;
        Arc::new(state)
    }

    fn kind(start: &Start) -> (&'static str, u64) {
        match start {
            Start::Kept(s) => ("kept", s.position()),
            Start::Scratch => ("scratch", 0),
            Start::Copy(s) => ("copy", s.position()),
            Start::Move(s) => ("move", s.position()),
        }
    }

    #[test]
    fn an_anchor_is_copied_and_a_step_moved_on() {
        let past = PastStates::default();
        assert_eq!(kind(&past.start(Until::Position(10))), ("scratch", 0));
        past.keep(at(10), true);
        assert_eq!(kind(&past.start(Until::Position(10))), ("kept", 10));
        assert_eq!(kind(&past.start(Until::Position(5))), ("scratch", 0));
        assert_eq!(kind(&past.start(Until::Position(12))), ("copy", 10));
        past.keep(at(12), false);
        assert_eq!(kind(&past.start(Until::Position(12))), ("kept", 12));
        // Stepping on moves the step: it is no longer kept, the anchor still is.
        assert_eq!(kind(&past.start(Until::Position(15))), ("move", 12));
        assert_eq!(kind(&past.start(Until::Position(12))), ("copy", 10));
        past.keep(at(15), false);
        assert_eq!(kind(&past.start(Until::Position(10))), ("kept", 10));
        assert_eq!(kind(&past.start(Until::Position(15))), ("kept", 15));
    }

    #[test]
    fn a_hit_is_found_without_folding_and_idle_states_are_let_go() {
        let past = PastStates::default();
        assert!(past.kept(Until::Position(10)).is_none());
        past.keep(at(10), true);
        assert!(past.kept(Until::Position(12)).is_none(), "not a hit");
        assert_eq!(kind(&past.start(Until::Position(12))), ("copy", 10));
        assert!(past.kept(Until::Position(10)).is_some());
        past.forget_idle(Duration::from_secs(60));
        assert!(
            past.kept(Until::Position(10)).is_some(),
            "asked for just now"
        );
        past.forget_idle(Duration::ZERO);
        assert!(past.kept(Until::Position(10)).is_none());
    }

    #[test]
    fn the_least_recently_used_goes() {
        let past = PastStates::default();
        past.keep(at(10), true);
        past.keep(at(20), true);
        assert_eq!(kind(&past.start(Until::Position(10))), ("kept", 10));
        past.keep(at(30), true);
        assert_eq!(kind(&past.start(Until::Position(10))), ("kept", 10));
        assert_eq!(kind(&past.start(Until::Position(30))), ("kept", 30));
        assert_eq!(kind(&past.start(Until::Position(20))), ("copy", 10));
        // A fold to a kept position replaces it and keeps its anchor mark.
        past.keep(at(30), false);
        assert_eq!(kind(&past.start(Until::Position(31))), ("copy", 30));
    }
}
