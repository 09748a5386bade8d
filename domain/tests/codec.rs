//! Codec tests: golden bytes of every event kind, and round trips of random events.

use chrono::{DateTime, TimeZone, Utc};
use idledger_domain::envelope::{decode_record, encode_record, RawRecord, RecordFields};
use idledger_domain::samples::{sample_event, SampleSeed};
use idledger_domain::*;
use proptest::prelude::*;
use uuid::Uuid;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/golden/records.txt"
);

fn stream_for(event: &Event, n: u128) -> StreamId {
    match event.stream_kind() {
        StreamKind::Domain => StreamId::domain(DomainId(Uuid::from_u128(n))),
        StreamKind::User => StreamId::user(UserId(Uuid::from_u128(n))),
        StreamKind::Tokens => StreamId::tokens(),
        StreamKind::Provider => StreamId::provider(),
        StreamKind::Other => StreamId::new("bench-1").unwrap(),
    }
}

fn actor_for(i: u64) -> Actor {
    let id = Uuid::from_u128(0xac7 + u128::from(i));
    match i % 6 {
        0 => Actor::System,
        1 => Actor::Operator,
        2 => Actor::Sync(DomainId(id)),
        3 => Actor::Scheduler(DomainId(id)),
        4 => Actor::Token(TokenId(id), Role::Admin),
        _ => Actor::Token(TokenId(id), Role::Agent),
    }
}

/// One record per kind, chained, with fixed fields.
fn golden_records() -> Vec<(String, u16, Vec<u8>, Envelope)> {
    let seed = SampleSeed::golden();
    let at: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
        + chrono::Duration::microseconds(123_456);
    let mut prev = Hash::ZERO;
    let mut out = Vec::new();
    for (i, kind) in Event::KINDS.iter().enumerate() {
        let event = sample_event(i, &seed).expect("every kind has a sample");
        assert_eq!(event.kind(), *kind, "sample {i} has the wrong kind");
        let proposed = ProposedEvent {
            event_id: Uuid::from_u128(0xe0 + i as u128),
            actor: actor_for(i as u64),
            correlation_id: (i % 2 == 0).then(|| Uuid::from_u128(0xc0)),
            causation_id: (i % 3 == 0).then(|| Uuid::from_u128(0xca)),
            event,
        };
        let stream = stream_for(&proposed.event, 0x5eed);
        let fields = RecordFields {
            position: i as u64 + 1,
            stream: &stream,
            version: i as u64 + 1,
            recorded_at: at,
            proposed: &proposed,
        };
        let (bytes, hash) = encode_record(fields, &prev).unwrap();
        let env = decode_record(&bytes).unwrap();
        prev = hash;
        out.push((kind.to_string(), env.schema(), bytes, env));
    }
    out
}

#[test]
fn golden_encodings_of_every_kind_are_stable() {
    let records = golden_records();
    let rendered: String = records
        .iter()
        .map(|(k, s, b, _)| format!("{k} {s} {}\n", hex::encode(b)))
        .collect();
    if std::env::var_os("IDLEDGER_BLESS").is_some() {
        std::fs::write(GOLDEN, &rendered).unwrap();
    }
    let stored = std::fs::read_to_string(GOLDEN)
        .expect("fixtures/golden/records.txt is missing; run with IDLEDGER_BLESS=1 once");
    // Compare line by line so a failure names the kind whose bytes changed.
    let stored_lines: Vec<&str> = stored.lines().collect();
    let new_lines: Vec<&str> = rendered.lines().collect();
    for (old, new) in stored_lines.iter().zip(&new_lines) {
        assert_eq!(
            old,
            new,
            "the encoding of {} changed: bump its schema and add an upcaster instead",
            new.split(' ').next().unwrap_or("?")
        );
    }
    assert_eq!(
        stored_lines.len(),
        new_lines.len(),
        "the catalogue gained or lost kinds"
    );
}

#[test]
fn golden_bytes_still_decode_and_chain() {
    let stored = std::fs::read_to_string(GOLDEN).unwrap();
    let expected = golden_records();
    let mut prev = Hash::ZERO;
    for (line, (kind, _, _, env)) in stored.lines().zip(&expected) {
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some(kind.as_str()));
        let _schema = parts.next();
        let bytes = hex::decode(parts.next().unwrap()).unwrap();
        let raw = RawRecord::parse(&bytes).unwrap();
        assert_eq!(raw.prev_hash, prev);
        assert_eq!(raw.computed_hash(), raw.hash, "hash of {kind}");
        assert_eq!(&raw.decode().unwrap(), env, "decoded {kind}");
        prev = raw.hash;
    }
}

/// `Event::sealed` names the secret of every kind that carries one (a restore without a
/// key store relies on it to tell that secrets would be lost), and no other kind.
#[test]
fn every_kind_that_carries_a_sealed_secret_says_so() {
    for (kind, _, _, env) in golden_records() {
        let shows_sealed = env.event.payload_json().to_string().contains("\"sealed\"");
        assert_eq!(env.event.sealed().is_some(), shows_sealed, "{kind}");
    }
}

#[test]
fn json_view_never_shows_sealed_bytes() {
    for (kind, _, _, env) in golden_records() {
        let json = env.to_json().to_string();
        assert!(
            !json.contains("deadbeef") && !json.contains("[222,173"),
            "{kind}: {json}"
        );
        if matches!(kind.as_str(), "DomainCredentialsSet" | "RotationStarted") {
            assert!(json.contains("\"sealed\""), "{kind}: {json}");
        }
    }
}

#[test]
fn damaged_records_are_errors_not_panics() {
    let (_, _, bytes, _) = golden_records().remove(13);
    for cut in 0..bytes.len() {
        let _ = decode_record(&bytes[..cut]);
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let _ = decode_record(&b);
    }
    assert!(decode_record(&[2; 80]).is_err());
}

fn arb_seed() -> impl Strategy<Value = SampleSeed> {
    (
        any::<u64>(),
        "\\PC{0,40}",
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(number, text, flag, bytes)| SampleSeed {
            number,
            text,
            flag,
            bytes,
        })
}

proptest! {
    #[test]
    fn every_kind_round_trips(
        kind in 0..Event::KINDS.len(),
        seed in arb_seed(),
        position in 1u64..u64::MAX / 2,
        version in 1u64..1_000_000,
        micros in 0i64..4_102_444_800_000_000,
        actor in 0u64..12,
        prev in any::<[u8; 32]>(),
    ) {
        let event = sample_event(kind, &seed).unwrap();
        let proposed = ProposedEvent {
            event_id: Uuid::from_u128(u128::from(seed.number) * 31 + 7),
            actor: actor_for(actor),
            correlation_id: seed.flag.then(|| Uuid::from_u128(u128::from(position))),
            causation_id: None,
            event,
        };
        let stream = stream_for(&proposed.event, u128::from(seed.number));
        let recorded_at = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
        let fields = RecordFields { position, stream: &stream, version, recorded_at, proposed: &proposed };
        let (bytes, hash) = encode_record(fields, &Hash(prev)).unwrap();
        let env = decode_record(&bytes).unwrap();
        prop_assert_eq!(env.position, position);
        prop_assert_eq!(env.version, version);
        prop_assert_eq!(&env.stream, &stream);
        prop_assert_eq!(env.recorded_at, recorded_at);
        prop_assert_eq!(&env.actor, &proposed.actor);
        prop_assert_eq!(env.correlation_id, proposed.correlation_id);
        prop_assert_eq!(&env.event, &proposed.event);
        prop_assert_eq!(env.hash, hash);
        prop_assert_eq!(env.prev_hash, Hash(prev));
        prop_assert_eq!(RawRecord::parse(&bytes).unwrap().computed_hash(), hash);
        // The JSON actor form parses back.
        let actor_text = env.actor.to_string();
        prop_assert_eq!(actor_text.parse::<Actor>().unwrap(), env.actor);
    }
}

/// Records stored under an older schema of their kind, as written by an earlier build:
/// they must decode (upcast) into today's struct.
#[test]
fn records_of_older_schemas_are_upcast() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/golden/upcasts.txt"
    ))
    .unwrap();
    let seed = SampleSeed::golden();
    let mut seen = 0;
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (kind, schema, hex_bytes) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let bytes = hex::decode(hex_bytes).unwrap();
        let raw = RawRecord::parse(&bytes).unwrap();
        assert_eq!(
            raw.computed_hash(),
            raw.hash,
            "{kind}: the stored hash still holds"
        );
        let env = decode_record(&bytes).unwrap();
        assert_eq!(env.kind(), kind);
        assert!(
            env.schema() > schema.parse::<u16>().unwrap(),
            "{kind} {schema} is old"
        );
        match (kind, &env.event) {
            ("KeyWriteSuperseded", Event::KeyWriteSuperseded(e)) => {
                assert_eq!(
                    e.reason,
                    events::SupersedeReason::NewerRotation {
                        rotation_id: RotationId(seed.uuid(16))
                    }
                );
            }
            ("SyncRunCompleted", Event::SyncRunCompleted(e)) => {
                assert_eq!(e.full, None, "schema 1 did not say");
                assert_eq!(e.run_id, SyncRunId(seed.uuid(3)));
            }
            ("SyncRunFailed", Event::SyncRunFailed(e)) => {
                assert_eq!(e.full, None, "schema 1 did not say");
                assert_eq!(e.run_id, SyncRunId(seed.uuid(3)));
            }
            ("DeltaCheckpointed", Event::DeltaCheckpointed(e)) => {
                assert!(e.recheck.is_empty(), "schema 1 rechecked nothing");
                assert!(e.users_delta_link.contains("users/delta"));
            }
            ("InviteSent", Event::InviteSent(e)) => {
                assert_eq!(e.link, None, "schema 1 carried no enrolment link");
                assert!(e.to.ends_with("@contoso.com"));
            }
            ("AppTokensIssued", Event::AppTokensIssued(e)) => {
                let refresh = e.refresh.as_ref().expect("the sample has a refresh token");
                assert_eq!(refresh.family, seed.uuid(22));
                assert_eq!(refresh.grant, None, "schema 1 did not record the grant");
                assert_eq!(e.app_id, AppId(seed.uuid(19)));
            }
            ("AppChanged", Event::AppChanged(e)) => {
                assert_eq!(e.id_token_alg, None, "schema 1 could not change it");
                assert_eq!(e.app_id, AppId(seed.uuid(19)));
                assert_eq!(e.domain_ids.len(), 1);
            }
            other => panic!("no expectation for {other:?}"),
        }
        seen += 1;
    }
    assert!(seen > 0);
}
