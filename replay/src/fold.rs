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
}
