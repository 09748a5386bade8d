//! A user folded from their stream alone is the user of the whole log's fold: the console's
//! "as of" page reads one stream instead of the log's prefix, and must answer the same.
//!
//! Every kind a user stream holds, in random order across a few users, with the events of
//! one user sharing ids now and then (a write acknowledged, a rotation finished) and never
//! with another user's (ids are random in the engine).

use chrono::{DateTime, Utc};
use idledger_domain::samples::{sample_event, SampleSeed};
use idledger_domain::{Actor, Envelope, Event, Hash, StreamId, StreamKind, UserId};
use idledger_replay::{fold, fold_user, Prefix, Until};
use proptest::prelude::*;
use std::convert::Infallible;

const USERS: u64 = 3;

/// The catalogue's kinds that belong on a user's stream.
fn user_kinds() -> Vec<usize> {
    (0..Event::KINDS.len())
        .filter(|&i| {
            sample_event(i, &SampleSeed::golden())
                .is_some_and(|e| e.stream_kind() == StreamKind::User)
        })
        .collect()
}

fn user(n: u64) -> UserId {
    UserId(uuid::Uuid::from_u128(0xa000 + u128::from(n)))
}

fn at(second: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + second as i64, 0).expect("a valid time")
}

/// The log: `steps` are (user, kind, variant, flag); commit times never go back, and a
/// few records share one (a group's).
fn log(steps: &[(u64, usize, u64, bool)]) -> Vec<Envelope> {
    let kinds = user_kinds();
    let mut versions = [0u64; USERS as usize];
    steps
        .iter()
        .enumerate()
        .filter_map(|(i, &(u, kind, variant, flag))| {
            let seed = SampleSeed {
                // Ids follow the number: shared within a user, never across users.
                number: u * 16 + variant,
                text: format!("user {u} {variant}"),
                flag,
                bytes: vec![u as u8, variant as u8],
            };
            let event = sample_event(kinds[kind % kinds.len()], &seed)?;
            versions[u as usize] += 1;
            Some(Envelope {
                position: i as u64 + 1,
                stream: StreamId::user(user(u)),
                version: versions[u as usize],
                event_id: uuid::Uuid::from_u128(i as u128 + 1),
                recorded_at: at(i as u64 / 3),
                actor: Actor::System,
                correlation_id: None,
                causation_id: None,
                event,
                prev_hash: Hash::default(),
                hash: Hash::default(),
            })
        })
        .enumerate()
        // Positions contiguous even where a sample kind was skipped.
        .map(|(i, mut e)| {
            e.position = i as u64 + 1;
            e
        })
        .collect()
}

/// What the API and console show of `u` in `p`, as JSON.
fn part(p: &Prefix, u: UserId) -> serde_json::Value {
    let p = &p.projections;
    serde_json::json!({
        "user": p.users.get(u),
        "rotations": p.rotations.of_user(u).collect::<Vec<_>>(),
        "key_writes": p.key_writes.of_user(u).collect::<Vec<_>>(),
        "sign_in": p.signins.get(u),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn one_users_fold_is_their_part_of_the_whole_fold(
        steps in proptest::collection::vec((0..USERS, 0..64usize, 0..3u64, any::<bool>()), 1..80),
        cut in 0..100usize,
        by_time in any::<bool>(),
    ) {
        let log = log(&steps);
        let position = (cut * log.len() / 99) as u64;
        let until = if by_time {
            Until::Time(log.get(position.saturating_sub(1) as usize).map_or(at(0), |e| e.recorded_at))
        } else {
            Until::Position(position)
        };
        let whole = Prefix::default()
            .extend(log.iter().cloned().map(Ok::<_, Infallible>), until, |_| {})
            .unwrap();
        for u in (0..USERS).map(user) {
            let stream = StreamId::user(u);
            let own = log.iter().filter(|e| e.stream == stream).cloned().map(Ok::<_, Infallible>);
            let alone = fold_user(own, until).unwrap();
            prop_assert_eq!(part(&alone, u), part(&whole, u), "{:?} at {:?}", u, until);
        }
    }
}

/// The property is not vacuous: the users it compares have rotations, key writes and
/// sign-in state to compare.
#[test]
fn the_log_it_checks_fills_every_part() {
    let steps: Vec<_> = (0..user_kinds().len())
        .map(|k| (0, k, (k % 2) as u64, true))
        .collect();
    let whole = fold(
        log(&steps).into_iter().map(Ok::<_, Infallible>),
        Until::End,
        |_| {},
    )
    .unwrap();
    let part = part(
        &Prefix {
            projections: whole,
            ..Prefix::default()
        },
        user(0),
    );
    for field in ["user", "rotations", "key_writes", "sign_in"] {
        assert!(
            !part[field].is_null() && part[field] != serde_json::json!([]),
            "{field}: {part}"
        );
    }
}
