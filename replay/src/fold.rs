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
    on_event: impl FnMut(&Envelope),
) -> Result<Projections, E> {
    Prefix::default()
        .extend(events, until, on_event)
        .map(|prefix| prefix.projections)
}

/// One user's state at `until`, folded from their stream alone (`events`, in version
/// order), for a console that opens one user as of a past time: reading their few records
/// takes a millisecond where the whole log's prefix takes seconds.
///
/// **The user's part of this fold is their part of the whole log's fold to `until`**: a
/// user's record, rotations, key writes and sign-in state change only with events of
/// their own stream. Only that part is filled in. A time cuts the stream where it cuts the
/// log only when commit times never go back in the log (the writer keeps them so; ask the
/// log before folding to a time this way).
pub fn fold_user<E>(
    events: impl IntoIterator<Item = Result<Envelope, E>>,
    until: Until,
) -> Result<Prefix, E> {
    Prefix::default().extend(events, until, |_| {})
}

/// A fold of the log's first records, and what tells which later stopping points it
/// leads to: a past state an auditor pages through is answered again without a read, and
/// one a little later is folded on from it rather than from the start.
///
/// **A prefix extended to `until` is exactly the fold from the start to `until`**: it is
/// only extended when every record it holds lies before `until` (see [`Prefix::leads_to`]).
#[derive(Clone, Debug, Default)]
pub struct Prefix {
    /// The records folded.
    pub projections: Projections,
    /// The latest commit time among them: a clock that stepped back stamps a later record
    /// earlier, so the last record's time is not always the latest.
    pub latest: Option<DateTime<Utc>>,
    /// The commit time of the first record left out, when the fold stopped before the
    /// log's end (`None` when it read to the end).
    pub next: Option<DateTime<Utc>>,
}

impl Prefix {
    /// Position of the last record folded (0 for none).
    pub fn position(&self) -> u64 {
        self.projections.position
    }

    /// True when the fold from the start to `until` applies every record this one holds:
    /// it can be extended to `until`.
    pub fn leads_to(&self, until: Until) -> bool {
        match until {
            Until::End => true,
            Until::Position(p) => self.position() <= p,
            Until::Time(t) => self.latest.is_none_or(|latest| latest <= t),
        }
    }

    /// True when the fold from the start to `until` applies exactly the records this one
    /// holds, whatever the log holds beyond them: extending it would read one record and
    /// apply none.
    pub fn is(&self, until: Until) -> bool {
        self.leads_to(until)
            && match until {
                // The log may have grown since.
                Until::End => false,
                Until::Position(p) => self.position() == p,
                Until::Time(t) => self.next.is_some_and(|next| next > t),
            }
    }

    /// Folds `events`, the records that follow this prefix in log order, onto it, up to
    /// `until`. `until` must be one this prefix [leads to](Prefix::leads_to).
    ///
    /// `on_event` is called with each envelope just before it is applied. The first error
    /// from the source stops the fold and is returned.
    pub fn extend<E>(
        mut self,
        events: impl IntoIterator<Item = Result<Envelope, E>>,
        until: Until,
        mut on_event: impl FnMut(&Envelope),
    ) -> Result<Prefix, E> {
        debug_assert!(self.leads_to(until), "{until:?} lies before this prefix");
        self.next = None;
        for env in events {
            let env = env?;
            if until.is_past(&env) {
                self.next = Some(env.recorded_at);
                break;
            }
            on_event(&env);
            self.latest = self.latest.max(Some(env.recorded_at));
            self.projections.apply_owned(env);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::events::{UserDiscovered, UserImported};
    use idledger_domain::{
        Actor, DomainId, Event, Hash, SsoSettings, StreamId, UserAttributes, UserId,
    };

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + second, 0).expect("a valid time")
    }

    fn envelope(position: u64, event: Event) -> Envelope {
        Envelope {
            position,
            stream: StreamId::user(UserId(uuid::Uuid::from_u128(1))),
            version: position,
            event_id: uuid::Uuid::from_u128(u128::from(position)),
            recorded_at: at(position as i64 * 10),
            actor: Actor::System,
            correlation_id: None,
            causation_id: None,
            event,
            prev_hash: Hash::default(),
            hash: Hash([position as u8; 32]),
        }
    }

    fn log() -> Vec<Result<Envelope, String>> {
        let discovered = UserDiscovered {
            user_id: UserId(uuid::Uuid::from_u128(1)),
            domain_id: DomainId(uuid::Uuid::from_u128(2)),
            external_id: "e".into(),
            attributes: UserAttributes::default(),
        };
        let imported = UserImported {
            sso: SsoSettings::default(),
        };
        vec![
            Ok(envelope(1, discovered.into())),
            Ok(envelope(2, imported.into())),
        ]
    }

    #[test]
    fn until_a_position_or_a_time_includes_it_and_stops_after() {
        let status = |until| {
            let p = fold(log(), until, |_| {}).unwrap();
            (
                p.position,
                p.users
                    .get(UserId(uuid::Uuid::from_u128(1)))
                    .map(|u| u.status.as_str()),
            )
        };
        assert_eq!(status(Until::End), (2, Some("active")));
        assert_eq!(status(Until::Position(1)), (1, Some("candidate")));
        assert_eq!(status(Until::Position(0)), (0, None));
        assert_eq!(status(Until::Time(at(10))), (1, Some("candidate")));
        assert_eq!(status(Until::Time(at(19))), (1, Some("candidate")));
        assert_eq!(status(Until::Time(at(20))), (2, Some("active")));
    }

    #[test]
    fn the_sources_first_error_stops_the_fold() {
        let mut events = log();
        events.insert(1, Err("unreadable".to_owned()));
        let mut seen = Vec::new();
        let result = fold(events, Until::End, |e| seen.push(e.position));
        assert_eq!(result.err(), Some("unreadable".to_owned()));
        assert_eq!(seen, vec![1]);
    }

    /// One user discovered per record, at times that may step back (a clock corrected).
    fn discoveries(times: &[i64]) -> Vec<Envelope> {
        times
            .iter()
            .enumerate()
            .map(|(i, &second)| {
                let position = i as u64 + 1;
                let mut env = envelope(
                    position,
                    UserDiscovered {
                        user_id: UserId(uuid::Uuid::from_u128(u128::from(position))),
                        domain_id: DomainId(uuid::Uuid::from_u128(0)),
                        external_id: position.to_string(),
                        attributes: UserAttributes::default(),
                    }
                    .into(),
                );
                env.recorded_at = at(second);
                env
            })
            .collect()
    }

    /// What tells two folds apart: the position, the users, the latest time. (Not the
    /// time of the record after: a kept state answers without reading it.)
    fn seen(p: &Prefix) -> (u64, Vec<UserId>, Option<DateTime<Utc>>) {
        let mut users: Vec<UserId> = p.projections.users.all().map(|u| u.id).collect();
        users.sort();
        (p.position(), users, p.latest)
    }

    fn until() -> impl proptest::strategy::Strategy<Value = Until> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..30).prop_map(Until::Position),
            (0i64..30).prop_map(|s| Until::Time(at(s))),
            Just(Until::End),
        ]
    }

    proptest::proptest! {
        /// Answering each point from the prefixes kept so far (one that is the point, else
        /// the longest that leads to it, folded on) gives what a fold from the start gives.
        #[test]
        fn a_kept_prefix_answers_or_extends_to_what_a_fold_from_the_start_gives(
            times in proptest::collection::vec(0i64..30, 0..25),
            points in proptest::collection::vec((until(), 0usize..25), 1..12),
        ) {
            let log = discoveries(&times);
            // The log grows between questions (to the largest length drawn so far).
            let mut written = 0;
            let from = |position: u64, written: usize| {
                log[..written]
                    .iter()
                    .filter(move |e| e.position > position)
                    .cloned()
                    .map(Ok::<_, String>)
            };
            let mut kept: Vec<Prefix> = Vec::new();
            for (point, length) in points {
                written = written.max(length.min(log.len()));
                let fresh = Prefix::default().extend(from(0, written), point, |_| {}).unwrap();
                let answer = match kept.iter().find(|k| k.is(point)) {
                    Some(hit) => hit.clone(),
                    None => {
                        let base = kept
                            .iter()
                            .filter(|k| k.leads_to(point))
                            .max_by_key(|k| k.position())
                            .cloned()
                            .unwrap_or_default();
                        let position = base.position();
                        base.extend(from(position, written), point, |_| {}).unwrap()
                    }
                };
                proptest::prop_assert_eq!(seen(&answer), seen(&fresh), "{:?}", point);
                kept.push(answer);
            }
        }
    }
}
