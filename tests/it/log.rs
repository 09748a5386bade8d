//! The event log's contract: atomic appends, expected versions, idempotency, reads,
//! subscriptions, and folding equal to the live projector.

use crate::support::*;
use idledger::projector::Projector;
use idledger::store::{
    subscribe, AppendError, AppendRequest, EventLog, ExpectedVersion, SledEventLog,
};
use idledger_domain::events::DomainRegistered;
use idledger_domain::{Actor, DomainSettings, ProposedEvent, StreamId};
use idledger_replay::{fold, Until};
use proptest::prelude::*;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn appends_are_atomic_versioned_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledEventLog::open(dir.path()).unwrap();
    let a = user(1);
    let first = append(
        &*log,
        a,
        ExpectedVersion::NoStream,
        vec![discovered(a), some_user_event(1), some_user_event(2)],
    )
    .await;
    assert_eq!(
        (
            first.first_position,
            first.last_position,
            first.stream_version
        ),
        (1, 3, 3)
    );
    let stale = log
        .append(AppendRequest::new(
            StreamId::user(a),
            ExpectedVersion::Exact(2),
            vec![proposed(some_user_event(3))],
        ))
        .await;
    assert!(
        matches!(
            stale,
            Err(AppendError::WrongExpectedVersion { actual: 3, .. })
        ),
        "{stale:?}"
    );
    let no_stream = log
        .append(AppendRequest::new(
            StreamId::user(a),
            ExpectedVersion::NoStream,
            vec![proposed(some_user_event(3))],
        ))
        .await;
    assert!(matches!(
        no_stream,
        Err(AppendError::WrongExpectedVersion { .. })
    ));
    let b = user(2);
    append(&*log, b, ExpectedVersion::Any, vec![discovered(b)]).await;
    append(
        &*log,
        a,
        ExpectedVersion::Exact(3),
        vec![some_user_event(4)],
    )
    .await;
    let stream = log.read_stream(&StreamId::user(a), 1, 100).unwrap();
    assert_eq!(
        stream.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        stream.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 5]
    );
    assert_eq!(
        log.read_stream(&StreamId::user(a), 3, 1).unwrap()[0].version,
        3
    );
    let all = log.read_all(1, 100).unwrap();
    assert_eq!(all.len(), 5);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash, "chain links");
    }
    assert_eq!(log.head().position, 5);
    assert_eq!(log.head().hash, all[4].hash);
}

#[tokio::test]
async fn the_same_event_ids_append_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledEventLog::open(dir.path()).unwrap();
    let u = user(7);
    let events = vec![proposed(discovered(u)), proposed(some_user_event(1))];
    let req = AppendRequest::new(StreamId::user(u), ExpectedVersion::NoStream, events.clone());
    let first = log.append(req.clone()).await.unwrap();
    // A retry (same ids, now-stale expected version) is answered with the first result.
    let again = log.append(req).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.first_position, again.last_position),
        (first.first_position, first.last_position)
    );
    assert_eq!(log.head().position, 2);
    // Reusing one known id with a new one is a conflict, not a partial append.
    let mixed = vec![events[0].clone(), proposed(some_user_event(2))];
    let r = log
        .append(AppendRequest::new(
            StreamId::user(u),
            ExpectedVersion::Any,
            mixed,
        ))
        .await;
    assert!(
        matches!(r, Err(AppendError::EventIdConflict { .. })),
        "{r:?}"
    );
    // The same id on another stream is a conflict too.
    let other = AppendRequest::new(
        StreamId::user(user(8)),
        ExpectedVersion::Any,
        vec![events[0].clone()],
    );
    assert!(matches!(
        log.append(other).await,
        Err(AppendError::EventIdConflict { .. })
    ));
    assert_eq!(log.head().position, 2);
    // Idempotency survives a restart (the id map is rebuilt from the log).
    drop(log);
    let log = reopen(dir.path()).await;
    let retry = AppendRequest::new(StreamId::user(u), ExpectedVersion::NoStream, events);
    assert!(log.append(retry).await.unwrap().duplicate);
}

#[tokio::test]
async fn events_must_match_their_stream_kind() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledEventLog::open(dir.path()).unwrap();
    let domain_event = DomainRegistered {
        domain_id: domain(),
        name: "contoso.onmicrosoft.com".into(),
        settings: DomainSettings::default(),
    };
    let wrong = AppendRequest::new(
        StreamId::user(user(1)),
        ExpectedVersion::Any,
        vec![ProposedEvent::new(
            Uuid::now_v7(),
            Actor::System,
            domain_event,
        )],
    );
    assert!(matches!(
        log.append(wrong).await,
        Err(AppendError::WrongStream { .. })
    ));
    let empty = AppendRequest::new(StreamId::user(user(1)), ExpectedVersion::Any, vec![]);
    assert!(matches!(
        log.append(empty).await,
        Err(AppendError::Invalid(_))
    ));
    assert_eq!(log.head().position, 0);
}

#[tokio::test]
async fn positions_versions_and_hashes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledEventLog::open(dir.path()).unwrap();
    for n in 0..20u128 {
        append(
            &*log,
            user(n % 4),
            ExpectedVersion::Any,
            vec![some_user_event(n as u64)],
        )
        .await;
    }
    let head = log.head();
    drop(log);
    let log = reopen(dir.path()).await;
    assert_eq!(log.head(), head);
    assert_eq!(log.stream_version(&StreamId::user(user(1))), 5);
    let next = append(
        &*log,
        user(1),
        ExpectedVersion::Exact(5),
        vec![some_user_event(0)],
    )
    .await;
    assert_eq!(next.first_position, 21);
    let all = log.read_all(20, 2).unwrap();
    assert_eq!(all[1].prev_hash, all[0].hash);
}

/// Format 2 stores records in pages, format 1 one per sled entry; both must answer every
/// read the same way, before and after reopening, whatever the group sizes were.
#[tokio::test]
async fn paged_and_one_record_stores_read_alike() {
    for format in [1u64, 2] {
        let dir = tempfile::tempdir().unwrap();
        if format == 1 {
            let db = sled::open(dir.path().join("store")).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("format", &format.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let log = SledEventLog::open(dir.path()).unwrap();
        // One large group (many pages), then small ones (a page each), side by side.
        let big: Vec<_> = (0..700).map(some_user_event).collect();
        append(&*log, user(1), ExpectedVersion::Any, big).await;
        let small = (0..40u64).map(|n| {
            let log = log.clone();
            async move {
                append(
                    &*log,
                    user(2 + u128::from(n % 3)),
                    ExpectedVersion::Any,
                    vec![some_user_event(n)],
                )
                .await
            }
        });
        futures_util::future::join_all(small).await;
        let head = log.head();
        assert_eq!(head.position, 740);
        let all = log.read_all(1, 10_000).unwrap();
        let check = |log: &SledEventLog| {
            for from in [1u64, 2, 17, 255, 256, 257, 699, 700, 701, 739, 740] {
                let got = log.read_all(from, 3).unwrap();
                let want: Vec<_> = all
                    .iter()
                    .skip(from as usize - 1)
                    .take(3)
                    .cloned()
                    .collect();
                assert_eq!(got, want, "format {format}, from {from}");
            }
            assert!(log.read_all(741, 3).unwrap().is_empty());
            let stream = log.read_stream(&StreamId::user(user(1)), 650, 100).unwrap();
            assert_eq!(stream.len(), 51);
            assert_eq!(stream[0].position, 650);
        };
        check(&log);
        drop(log);
        let log = reopen(dir.path()).await;
        assert_eq!(log.head(), head);
        check(&log);
        drop(log);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let raw = idledger::store::sled_log::open_raw(dir.path()).unwrap();
        assert_eq!(raw.head().unwrap(), Some((740, head.hash)));
        for p in [1u64, 300, 700, 740] {
            let bytes = raw.record(p).unwrap();
            assert_eq!(
                idledger_domain::envelope::decode_record(&bytes).unwrap(),
                all[p as usize - 1]
            );
        }
        assert_eq!(raw.records().count(), 740);
        let entries = raw.entries().unwrap();
        if format == 1 {
            assert_eq!(entries, 740);
        } else {
            assert!(entries < 100, "{entries} sled entries for 740 records");
        }
    }
}

#[tokio::test]
async fn catch_up_subscription_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledEventLog::open(dir.path()).unwrap();
    for n in 0..300u128 {
        append(
            &*log,
            user(n % 7),
            ExpectedVersion::Any,
            vec![some_user_event(n as u64)],
        )
        .await;
    }
    // Appends keep running while several subscribers start at different points.
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for n in 0..2000u128 {
                let events = (0..(n % 3 + 1))
                    .map(|k| some_user_event(k as u64))
                    .collect();
                append(&*log, user(n % 11), ExpectedVersion::Any, events).await;
                if n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut readers = Vec::new();
    for from in [1u64, 150, 299, 301] {
        let log = log.clone();
        readers.push(tokio::spawn(async move {
            let mut sub = subscribe(log, from);
            let mut seen = Vec::new();
            while seen.len() < 2500 {
                let batch = sub.next_batch(97).await.unwrap();
                seen.extend(batch.into_iter().map(|e| e.position));
            }
            (from, seen)
        }));
    }
    writer.await.unwrap();
    for r in readers {
        let (from, seen) = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .unwrap()
            .unwrap();
        let expected: Vec<u64> = (from..from + seen.len() as u64).collect();
        assert_eq!(seen, expected, "subscriber from {from}");
    }
}

fn fold_log(log: &SledEventLog) -> idledger_projections::Projections {
    fold(idledger::store::envelopes(log, 1), Until::End, |_| {}).unwrap()
}

#[derive(Debug, Clone)]
struct Op {
    task: usize,
    stream: u128,
    stale: bool,
    events: u64,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (0usize..6, 0u128..5, proptest::bool::weighted(0.3), 1u64..4).prop_map(
            |(task, stream, stale, events)| Op {
                task,
                stream,
                stale,
                events,
            },
        ),
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random concurrent appends: positions and versions stay contiguous, a conflict is
    /// reported exactly when the expected version was not the stream's version, and
    /// folding the log equals the live projector's state.
    #[test]
    fn concurrent_appends_keep_the_log_consistent(ops in ops()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let log = SledEventLog::open(dir.path()).unwrap();
            let projector = Projector::start(log.clone());
            for s in 0..5u128 {
                append(&*log, user(s), ExpectedVersion::NoStream, vec![discovered(user(s))]).await;
            }
            let mut tasks = Vec::new();
            for t in 0..6 {
                let mine: Vec<Op> = ops.iter().filter(|o| o.task == t).cloned().collect();
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let mut results = Vec::new();
                    for op in mine {
                        let stream = StreamId::user(user(op.stream));
                        let seen = log.stream_version(&stream);
                        let expected = if op.stale { seen.saturating_sub(1) } else { seen };
                        let events = (0..op.events).map(|k| proposed(some_user_event(k))).collect();
                        let r = log.append(AppendRequest::new(stream, ExpectedVersion::Exact(expected), events)).await;
                        results.push((op.events, expected, r));
                    }
                    results
                }));
            }
            let mut appended = 5u64;
            for t in tasks {
                for (n, expected, r) in t.await.unwrap() {
                    match r {
                        Ok(a) => {
                            assert_eq!(a.stream_version, expected + n, "success means the expectation held");
                            assert_eq!(a.last_position - a.first_position + 1, n);
                            appended += n;
                        }
                        Err(AppendError::WrongExpectedVersion { actual, .. }) => {
                            assert_ne!(actual, expected, "a conflict means the expectation failed");
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }
            let all = log.read_all(1, 100_000).unwrap();
            assert_eq!(all.len() as u64, appended);
            let mut versions = std::collections::HashMap::new();
            for (i, e) in all.iter().enumerate() {
                assert_eq!(e.position, i as u64 + 1);
                let v = versions.entry(e.stream.clone()).or_insert(0u64);
                *v += 1;
                assert_eq!(e.version, *v);
            }
            projector.wait_for(log.head().position, Duration::from_secs(10)).await.unwrap();
            let live = serde_json::to_value(&*projector.read()).unwrap();
            let folded = serde_json::to_value(fold_log(&log)).unwrap();
            assert_eq!(live, folded);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_racing_its_original_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledEventLog::open(dir.path()).unwrap();
    for n in 0..50u128 {
        let u = user(100 + n);
        let req = AppendRequest::new(
            StreamId::user(u),
            ExpectedVersion::NoStream,
            vec![proposed(discovered(u)), proposed(some_user_event(1))],
        );
        let (a, b) = tokio::join!(log.append(req.clone()), log.append(req));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            (a.first_position, a.last_position),
            (b.first_position, b.last_position)
        );
        assert!(a.duplicate != b.duplicate, "exactly one of the two wrote");
        // The answer is only given once the events are readable (committed).
        assert!(log.head().position >= a.last_position);
    }
    assert_eq!(log.head().position, 100);
}

/// `idledger bench append` under strace, with `fdatasync` answered as strace is told to.
fn traced_bench_append(
    dir: &std::path::Path,
    durability: &str,
    inject: Option<&str>,
    tree: &str,
) -> (std::process::Output, String, usize) {
    let run = format!("{durability}-{}-{tree}", inject.is_some());
    let data = dir.join(format!("data-{run}"));
    let acks = dir.join(format!("acks-{run}"));
    let trace = dir.join(format!("trace-{run}"));
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-e", "trace=fdatasync"]);
    if let Some(i) = inject {
        cmd.args(["-e", i]);
    }
    cmd.arg("-o")
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_idledger"))
        .args(["bench", "append", "--events", "400", "--writers", "8"])
        .args(["--tree", tree])
        .args(["--durability", durability])
        .arg("--data-dir")
        .arg(&data)
        .arg("--ack-file")
        .arg(&acks);
    let out = cmd
        .output()
        .expect("strace is needed for this test (apt-get install strace; .ci/run installs it)");
    let acked = std::fs::read_to_string(&acks).map_or(0, |s| s.lines().count());
    (out, std::fs::read_to_string(&trace).unwrap(), acked)
}

/// Acknowledged means on the device: with `fdatasync` of the log's file failing, not one
/// append may be acknowledged (a build that synced after answering, or not at all, would
/// acknowledge them). With `durability = "process"` the same failure changes nothing,
/// because nothing syncs the log that way: that is the risk the opt-out accepts.
#[test]
fn an_append_is_acknowledged_only_after_fdatasync_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = "/store/db>";
    // Device durability, every fdatasync failing (opening syncs with fsync).
    let (out, trace, acked) = traced_bench_append(
        dir.path(),
        "device",
        Some("inject=fdatasync:error=EIO"),
        "off",
    );
    assert!(
        !out.status.success(),
        "appends went on after a failed fdatasync"
    );
    assert_eq!(acked, 0, "acknowledged without the device having it");
    assert!(
        trace
            .lines()
            .any(|l| l.contains(log_file) && l.contains("EIO") && l.contains("INJECTED")),
        "{trace}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fdatasync"),
        "the failure is named: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Device durability: one fdatasync of the log per group commit, at least.
    let (out, trace, acked) = traced_bench_append(dir.path(), "device", None, "off");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(acked, 400);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench prints its JSON");
    let syncs = trace
        .lines()
        .filter(|l| l.contains("fdatasync(") && l.contains(log_file))
        .count() as u64;
    assert!(
        syncs >= report["flushes"].as_u64().unwrap(),
        "{syncs} fdatasyncs for {report}"
    );
    // Process durability: no fdatasync of the log, so the injected failure is never seen.
    let (out, trace, acked) = traced_bench_append(
        dir.path(),
        "process",
        Some("inject=fdatasync:error=EIO"),
        "off",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(acked, 400);
    assert!(!trace.lines().any(|l| l.contains(log_file)), "{trace}");
    // Process durability with heads signed: a head names only records on the device, so
    // signing syncs the log's file first (sled's own flush, `sync_file_range`, would not
    // survive a power loss, and the data dir would then hold a head over missing records).
    let (out, trace, acked) = traced_bench_append(dir.path(), "process", None, "on");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(acked, 400);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench prints its JSON");
    assert!(
        report["signed_tree_size"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(
        trace
            .lines()
            .any(|l| l.contains("fdatasync(") && l.contains(log_file)),
        "{trace}"
    );
}

/// Events seen by a fold that only counts them.
fn count(n: u64, _: &idledger_domain::Event) -> u64 {
    n + 1
}

/// The command path starts from its snapshot of a stream, and still folds everything
/// other writers appended after it; a refusal keeps the fold it made; with snapshots off
/// every decision sees the same.
#[tokio::test]
async fn decisions_see_other_writers_appends_after_their_snapshot() {
    use idledger::store::decide_and_append;
    use std::sync::atomic::{AtomicU64, Ordering};
    for capacity in [16, 0] {
        let dir = tempfile::tempdir().unwrap();
        let log = SledEventLog::open(dir.path()).unwrap();
        log.snapshots().set_capacity(capacity);
        let u = user(1);
        let stream = StreamId::user(u);
        append(
            &*log,
            u,
            ExpectedVersion::NoStream,
            vec![discovered(u), some_user_event(1)],
        )
        .await;
        let seen = AtomicU64::new(0);
        let decide = |n: &u64| {
            seen.store(*n, Ordering::SeqCst);
            Ok(vec![some_user_event(*n)])
        };
        decide_and_append(&*log, &stream, &Actor::System, None, count, decide)
            .await
            .unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        // Another writer, beside the command path.
        append(
            &*log,
            u,
            ExpectedVersion::Any,
            vec![some_user_event(4), some_user_event(5)],
        )
        .await;
        decide_and_append(&*log, &stream, &Actor::System, None, count, decide)
            .await
            .unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 5, "capacity {capacity}");
        append(&*log, u, ExpectedVersion::Any, vec![some_user_event(7)]).await;
        let refused = decide_and_append(&*log, &stream, &Actor::System, None, count, |n| {
            seen.store(*n, Ordering::SeqCst);
            Err(idledger_domain::decide::Rejection::Conflict("no".into()))
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 7);
        let kept = log
            .snapshots()
            .get(&stream, idledger::store::Fold::Events(count));
        assert_eq!(kept, (capacity > 0).then_some((7, 7)));
        // A stream longer than one page of the fold is folded whole.
        for chunk in 0..9 {
            let events = (0..1000)
                .map(|i| some_user_event(chunk * 1000 + i))
                .collect();
            append(&*log, u, ExpectedVersion::Any, events).await;
        }
        log.snapshots().set_capacity(0);
        decide_and_append(&*log, &stream, &Actor::System, None, count, decide)
            .await
            .unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 9007, "capacity {capacity}");
    }
}

/// Shutdown closes the log before its last head is signed: appends still running when it
/// closes either land before `close` returns or are refused, never after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_takes_nothing_more_once_close_returns() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(SledEventLog::open(dir.path()).unwrap());
    let writers: Vec<_> = (0..8u128)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let u = user(500 + w);
                let mut taken = 0u64;
                loop {
                    let req = AppendRequest::new(
                        StreamId::user(u),
                        ExpectedVersion::Any,
                        vec![proposed(some_user_event(taken))],
                    );
                    match log.append(req).await {
                        Ok(_) => taken += 1,
                        Err(e) => return (taken, e),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.close().await;
    let head = log.head().position;
    assert!(!log.accepting());
    let mut acknowledged = 0;
    for w in writers {
        let (taken, refused) = w.await.unwrap();
        assert!(refused.to_string().contains("closed"), "{refused}");
        acknowledged += taken;
    }
    assert!(acknowledged > 0);
    assert_eq!(
        log.head().position,
        head,
        "an append landed after close returned"
    );
    assert_eq!(
        head, acknowledged,
        "every acknowledged append is in, nothing else"
    );
}

/// The tree recomputed by parallel readers, each hashing whole ranges to their roots, is
/// the tree of the records pushed one by one, at every size around the ranges' edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_recomputed_in_parallel_ranges_is_the_tree_leaf_by_leaf() {
    const RANGE: u64 = 1 << 14;
    let dir = tempfile::tempdir().unwrap();
    let log = SledEventLog::open(dir.path()).unwrap();
    let total = 2 * RANGE + 700;
    let mut n = 0u64;
    while n < total {
        let events = (n..(n + 5000).min(total))
            .map(some_user_event)
            .collect::<Vec<_>>();
        n += events.len() as u64;
        append(&*log, user(n.into()), ExpectedVersion::Any, events).await;
    }
    drop(log);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let raw = idledger::store::sled_log::open_raw(dir.path()).unwrap();
    let mut one_by_one = vec![idledger_replay::tree::Frontier::new()];
    for r in raw.records() {
        let mut next = one_by_one.last().unwrap().clone();
        next.push(idledger_replay::tree::leaf_hash(&r.unwrap().1));
        one_by_one.push(next);
    }
    assert_eq!(one_by_one.len() as u64, total + 1);
    for size in [0, 1, RANGE - 1, RANGE, RANGE + 1, 2 * RANGE, total] {
        for threads in [1, 2, 3] {
            let tree = raw.tree(size, threads).unwrap();
            assert_eq!(
                tree, one_by_one[size as usize],
                "size {size}, {threads} threads"
            );
        }
    }
    assert!(
        raw.tree(total + 1, 2).is_err(),
        "a missing position is an error"
    );
}
