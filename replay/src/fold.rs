//! Folding a prefix of the log into projections.

use chrono::{DateTime, Utc};
use idledger_domain::Envelope;
use idledger_projections::Projections;

/// Where a replay stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The whole log.
    End,
    /// Up to and including this position.
    Position(u64),
    /// Every event recorded at or before this time.
    Time(DateTime<Utc>),
}

impl Until {
    /// True when `env` lies past the stopping point.
    pub fn is_past(&self, env: &Envelope) -> bool {
        match *self {
            Until::End => false,
            Until::Position(p) => env.position > p,
            Until::Time(t) => env.recorded_at > t,
        }
    }
}

/// Folds `events` (in log order) into fresh projections, stopping at `until`.
///
/// `on_event` is called with each envelope just before it is applied (for progress bars). The first error
/// from the source stops the fold and is returned.
pub fn fold<E>(
    events: impl IntoIterator<Item = Result<Envelope, E>>,
    until: Until,
    mut on_event: impl FnMut(&Envelope),
) -> Result<Projections, E> {
    let mut p = Projections::new();
    for env in events {
        let env = env?;
        if until.is_past(&env) {
            break;
        }
        on_event(&env);
        p.apply_owned(env);
    }
    Ok(p)
}
