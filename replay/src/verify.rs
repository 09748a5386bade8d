//! Chain verification over stored records.
//!
//! [`Verifier`] takes records one at a time (`push`), so it runs over a sled scan, an HTTP
//! feed or a file alike, in constant memory apart from per-stream versions and event ids.

use crate::tree::{leaf_hash, Frontier, TreeHead};
use idledger_domain::envelope::RawRecord;
use idledger_domain::{Envelope, Hash};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

/// Problems kept in a report beyond the first (the count is always exact).
pub const MAX_PROBLEMS: usize = 100;

/// One thing wrong with the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The position (key) of the bad record.
    pub position: u64,
    /// What is wrong.
    pub reason: String,
}

/// How the problem of a record that could not be read begins.
const UNREADABLE: &str = "unreadable: ";

/// The outcome of a verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// No problem found.
    pub ok: bool,
    /// Records read.
    pub events: u64,
    /// Position of the last record read.
    pub head_position: u64,
    /// Hash of the last record read.
    pub head_hash: Hash,
    /// Total number of problems.
    pub problem_count: u64,
    /// The first problems, in log order.
    pub problems: Vec<Problem>,
    /// The Merkle tree's root over the records read (RFC 9162).
    pub tree_root: Hash,
    /// The smallest tree size whose signed root the records do not give, if any.
    pub first_inconsistent_tree_size: Option<u64>,
    /// Reading stopped at an error of the source (a file, a server that did not answer):
    /// what lies beyond was not checked, so a head never reached is not taken for one the
    /// records fail.
    pub read_failed: bool,
}

impl VerifyReport {
    /// The first bad position, if any.
    pub fn first_bad(&self) -> Option<&Problem> {
        self.problems.first()
    }

    /// The first problem, when it is that reading stopped (a feed that stopped
    /// answering): nothing beyond it was checked, and nothing before it failed.
    pub fn stopped_reading(&self) -> Option<&Problem> {
        self.first_bad()
            .filter(|p| self.read_failed && p.reason.starts_with(UNREADABLE))
    }

    /// The one-line JSON summary printed by `idledger verify`.
    pub fn summary_json(&self) -> serde_json::Value {
        use base64::Engine;
        let root = base64::engine::general_purpose::STANDARD.encode(self.tree_root.0);
        match self.first_bad() {
            None => serde_json::json!({
                "ok": true,
                "events": self.events,
                "head_position": self.head_position,
                "head_hash": self.head_hash.to_hex(),
                "tree_size": self.events,
                "tree_root": root,
            }),
            Some(p) => {
                let mut v = serde_json::json!({
                    "ok": false,
                    "first_bad_position": p.position,
                    "reason": p.reason,
                    "problems": self.problem_count,
                });
                if let Some(size) = self.first_inconsistent_tree_size {
                    v["first_inconsistent_tree_size"] = size.into();
                }
                v
            }
        }
    }
}

/// One stored record, parsed, hashed and decoded: the part of verification that needs
/// nothing but the record, so it can run on any thread.
#[derive(Debug)]
pub struct CheckedRecord {
    /// The position the record was read under.
    pub position: u64,
    /// Its chain links, or why the record could not be parsed.
    pub links: Result<Links, String>,
    /// The decoded envelope, or why it could not be decoded.
    pub envelope: Result<Envelope, String>,
    /// The record's leaf hash in the Merkle tree (when checked, not only decoded).
    pub leaf: Option<Hash>,
}

/// A record's place in the chain.
#[derive(Clone, Copy, Debug)]
pub struct Links {
    /// The hash it says comes before it.
    pub prev_hash: Hash,
    /// The hash it carries.
    pub hash: Hash,
    /// Whether the carried hash is the hash of its content (`None`: not computed).
    pub hash_matches: Option<bool>,
}

impl CheckedRecord {
    /// Parses, hashes and decodes the record stored under `position`.
    pub fn check(position: u64, bytes: &[u8]) -> Self {
        Self::read(position, bytes, true)
    }

    /// Parses and decodes without recomputing the hash (an export that is not checking).
    pub fn decode(position: u64, bytes: &[u8]) -> Self {
        Self::read(position, bytes, false)
    }

    fn read(position: u64, bytes: &[u8], hash: bool) -> Self {
        match RawRecord::parse(bytes) {
            Err(e) => CheckedRecord {
                position,
                links: Err(e.to_string()),
                envelope: Err(e.to_string()),
                leaf: hash.then(|| leaf_hash(bytes)),
            },
            Ok(raw) => CheckedRecord {
                position,
                links: Ok(Links {
                    prev_hash: raw.prev_hash,
                    hash: raw.hash,
                    hash_matches: hash.then(|| raw.computed_hash() == raw.hash),
                }),
                envelope: raw.decode().map_err(|e| e.to_string()),
                leaf: hash.then(|| leaf_hash(bytes)),
            },
        }
    }
}

/// A signed head as a reader hands it to [`Verifier::expect_heads_in_order`], or why it
/// could not be read.
pub type HeadRead = Result<TreeHead, String>;

/// The heads still to be reached: the next one, and a reader of those after it.
#[derive(Default)]
struct HeadQueue {
    next: Option<TreeHead>,
    rest: Option<Box<dyn Iterator<Item = HeadRead> + Send>>,
}

impl std::fmt::Debug for HeadQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadQueue")
            .field("next", &self.next)
            .field("more", &self.rest.is_some())
            .finish()
    }
}

/// Streaming verifier: feed records in key order with [`Verifier::push`], then
/// [`Verifier::finish`].
#[derive(Debug, Default)]
pub struct Verifier {
    events: u64,
    last_position: u64,
    last_hash: Hash,
    problem_count: u64,
    problems: Vec<Problem>,
    stream_versions: FxHashMap<String, u64>,
    event_ids: FxHashSet<uuid::Uuid>,
    tree: Frontier,
    /// Signed heads to hold the records to, by increasing size.
    heads: HeadQueue,
    first_inconsistent: Option<u64>,
    read_failed: bool,
    /// Started after a position whose records it never saw: a stream's first version
    /// seen is taken as it is, and the tree is not the log's.
    resumed: bool,
}

impl Verifier {
    /// A verifier expecting the record at position 1 first.
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier that expects about `records` records: it sizes its tables once rather
    /// than growing them as it goes.
    pub fn expecting(records: u64) -> Self {
        let mut v = Self::default();
        v.event_ids
            .reserve(usize::try_from(records).unwrap_or(0).min(1 << 26));
        v
    }

    /// A verifier that takes up the chain after `position`, whose record's hash is `hash`
    /// (an incremental backup from `position + 1`). It checks positions and links as
    /// [`Verifier::new`] does; a stream's versions only from its first record seen, and
    /// event ids only among the records it sees.
    pub fn after(position: u64, hash: Hash) -> Self {
        Verifier {
            last_position: position,
            last_hash: hash,
            resumed: true,
            ..Self::default()
        }
    }

    /// The position of the last record taken.
    pub fn last_position(&self) -> u64 {
        self.last_position
    }

    /// The hash the last record taken carries.
    pub fn last_hash(&self) -> Hash {
        self.last_hash
    }

    /// The Merkle tree of the records taken (a verifier started with
    /// [`Verifier::after`] holds only those after its start).
    pub fn tree(&self) -> &Frontier {
        &self.tree
    }

    /// Problems found so far.
    pub fn problem_count(&self) -> u64 {
        self.problem_count
    }

    /// The first problem found, if any.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    /// Holds the records to these signed heads: when the tree reaches a head's size, its
    /// root must be the head's; a head larger than the log read means records withheld
    /// or lost.
    pub fn expect_heads(&mut self, mut heads: Vec<TreeHead>) {
        heads.sort_by_key(|h| h.tree_size);
        self.expect_heads_in_order(Box::new(heads.into_iter().map(Ok)));
    }

    /// [`Verifier::expect_heads`], the heads read as the tree reaches them, in increasing
    /// size: a data dir keeps a head per second of growth, years of which do not fit in
    /// memory. A head that cannot be read is a problem, and ends the heads.
    pub fn expect_heads_in_order(&mut self, heads: Box<dyn Iterator<Item = HeadRead> + Send>) {
        self.heads = HeadQueue {
            next: None,
            rest: Some(heads),
        };
        self.next_head();
    }

    /// Takes the next head off the queue (the one after it read).
    fn next_head(&mut self) {
        let last = self.heads.next.take().map(|h| h.tree_size);
        let Some(rest) = self.heads.rest.as_mut() else {
            return;
        };
        match rest.next() {
            // Two of one size are both held to the records (an auditor's and the server's
            // may differ); a smaller one after a larger would never be reached.
            Some(Ok(head)) if last.is_some_and(|l| head.tree_size < l) => {
                self.heads.rest = None;
                self.problem(
                    0,
                    format!(
                        "the heads are not in increasing size: {} after {}",
                        head.tree_size,
                        last.unwrap_or(0)
                    ),
                );
            }
            Some(Ok(head)) => self.heads.next = Some(head),
            Some(Err(why)) => {
                self.heads.rest = None;
                self.problem(0, why);
            }
            None => self.heads.rest = None,
        }
    }

    fn problem(&mut self, position: u64, reason: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { position, reason });
        }
    }

    /// Checks one stored record, read under `key` (its big-endian position key).
    pub fn push(&mut self, key: u64, bytes: &[u8]) {
        self.accept(&CheckedRecord::check(key, bytes));
    }

    /// Takes one record already checked (on any thread) by [`CheckedRecord::check`]; the
    /// checks that need the records before it (gaps, links, versions, duplicates) run here.
    pub fn accept(&mut self, record: &CheckedRecord) {
        let key = record.position;
        self.events += 1;
        if let Some(leaf) = record.leaf {
            self.tree.push(leaf);
            self.check_heads(key);
        }
        // Positions and versions are read from the store: u64::MAX is possible, and the
        // next after it is a problem to report, not an overflow.
        let expected = self.last_position.checked_add(1);
        if Some(key) != expected {
            let reason = if let Some(expected) = expected.filter(|e| key > *e) {
                format!("gap: expected position {expected}, found {key}")
            } else {
                format!("out of order: position {key} after {}", self.last_position)
            };
            self.problem(key, reason);
        }
        self.last_position = key;
        let links = match &record.links {
            Ok(l) => l,
            Err(e) => {
                self.problem(key, format!("bad encoding: {e}"));
                // Keep checking later links against whatever this record claimed.
                return;
            }
        };
        if links.prev_hash != self.last_hash {
            self.problem(
                key,
                "broken chain: prev_hash does not match the previous record".into(),
            );
        }
        if links.hash_matches == Some(false) {
            self.problem(key, "hash mismatch: record content was altered".into());
        }
        // Later records chain to the stored hash, so one altered record is one problem.
        self.last_hash = links.hash;
        let env = match &record.envelope {
            Ok(e) => e,
            Err(e) => {
                self.problem(key, format!("bad encoding: {e}"));
                return;
            }
        };
        if env.position != key {
            self.problem(
                key,
                format!("record says position {}, stored under {key}", env.position),
            );
        }
        let previous = match self.stream_versions.get_mut(env.stream.as_str()) {
            Some(v) => std::mem::replace(v, env.version),
            None => {
                self.stream_versions
                    .insert(env.stream.as_str().to_owned(), env.version);
                if self.resumed {
                    env.version.saturating_sub(1)
                } else {
                    0
                }
            }
        };
        if previous.checked_add(1) != Some(env.version) {
            let msg = format!(
                "stream {} version {} follows version {previous}",
                env.stream, env.version
            );
            self.problem(key, msg);
        }
        if !self.event_ids.insert(env.event_id) {
            self.problem(key, format!("duplicate event_id {}", env.event_id));
        }
    }

    fn check_heads(&mut self, key: u64) {
        let size = self.tree.size();
        while let Some(head) = self.heads.next {
            if head.tree_size > size {
                return;
            }
            self.next_head();
            if head.tree_size < size {
                // Only a head of no records is passed over (each other size is met as its
                // last record is read): its root is the empty tree's, whatever the log.
                if head.root_hash != crate::tree::EMPTY_ROOT {
                    self.first_inconsistent.get_or_insert(head.tree_size);
                    self.problem(
                        key,
                        format!(
                            "inconsistent: the tree head signed for size {} has another root than the empty tree's",
                            head.tree_size
                        ),
                    );
                }
                continue;
            }
            let root = self.tree.root();
            if root != head.root_hash {
                self.first_inconsistent.get_or_insert(size);
                self.problem(
                    key,
                    format!(
                        "inconsistent: the tree head signed for size {size} has another root than these records give"
                    ),
                );
            }
        }
    }

    /// Reports a record that could not be read at all (an IO error from the source).
    pub fn unreadable(&mut self, position: u64, reason: String) {
        self.read_failed = true;
        self.problem(position, format!("{UNREADABLE}{reason}"));
    }

    /// Records read so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The report.
    pub fn finish(mut self) -> VerifyReport {
        // The next head is the smallest never reached.
        match self.heads.next {
            Some(head) if self.read_failed => {
                let reason = format!(
                    "not checked: reading stopped before the {} records of a signed tree head",
                    head.tree_size
                );
                self.problem(self.last_position.saturating_add(1), reason);
            }
            Some(head) => {
                self.first_inconsistent.get_or_insert(head.tree_size);
                let reason = format!(
                    "missing: a tree head was signed for {} records; the log gives {}",
                    head.tree_size,
                    self.tree.size()
                );
                self.problem(self.last_position.saturating_add(1), reason);
            }
            None => {}
        }
        VerifyReport {
            ok: self.problem_count == 0,
            events: self.events,
            head_position: self.last_position,
            head_hash: self.last_hash,
            problem_count: self.problem_count,
            problems: self.problems,
            tree_root: self.tree.root(),
            first_inconsistent_tree_size: self.first_inconsistent,
            read_failed: self.read_failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::events::RotationGroupJoined;
    use idledger_domain::{encode_record, Actor, ProposedEvent, RecordFields, StreamId, UserId};

    /// One record of user `user`'s stream, chained to `prev`.
    fn record(
        position: u64,
        user: u128,
        version: u64,
        event_id: u128,
        prev: &Hash,
    ) -> (Vec<u8>, Hash) {
        let stream = StreamId::user(UserId(uuid::Uuid::from_u128(user)));
        let proposed = ProposedEvent::new(
            uuid::Uuid::from_u128(event_id),
            Actor::System,
            RotationGroupJoined {},
        );
        let recorded_at = chrono::DateTime::from_timestamp(1_700_000_000 + position as i64, 0)
            .expect("a valid time");
        encode_record(
            RecordFields {
                position,
                stream: &stream,
                version,
                recorded_at,
                proposed: &proposed,
            },
            prev,
        )
        .expect("encodes")
    }

    /// A sound log of `n` records: one stream, versions 1 to n.
    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = Hash::default();
        (1..=n)
            .map(|p| {
                let (bytes, hash) = record(p, 1, p, u128::from(p), &prev);
                prev = hash;
                bytes
            })
            .collect()
    }

    fn verify(records: &[(u64, Vec<u8>)]) -> VerifyReport {
        let mut v = Verifier::new();
        for (key, bytes) in records {
            v.push(*key, bytes);
        }
        v.finish()
    }

    fn numbered(records: Vec<Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
        (1..).zip(records).collect()
    }

    fn reasons(report: &VerifyReport) -> Vec<(u64, String)> {
        report
            .problems
            .iter()
            .map(|p| (p.position, p.reason.clone()))
            .collect()
    }

    #[test]
    fn a_sound_log_verifies_and_reports_its_head() {
        let records = chain(5);
        let report = verify(&numbered(records.clone()));
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events, 5);
        assert_eq!(report.head_position, 5);
        let last = RawRecord::parse(&records[4]).unwrap();
        assert_eq!(report.head_hash, last.hash);
        assert_eq!(report.summary_json()["ok"], true);
    }

    #[test]
    fn a_verifier_after_a_position_checks_the_link_to_it_and_not_what_came_before() {
        let records = chain(6);
        let third = RawRecord::parse(&records[2]).unwrap().hash;
        let mut v = Verifier::after(3, third);
        for (key, bytes) in numbered(records.clone()).into_iter().skip(3) {
            v.push(key, &bytes);
        }
        let report = v.finish();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.events, report.head_position), (3, 6));

        // The same records after another hash: the first is not linked to it.
        let mut v = Verifier::after(3, RawRecord::parse(&records[1]).unwrap().hash);
        for (key, bytes) in numbered(records).into_iter().skip(3) {
            v.push(key, &bytes);
        }
        assert_eq!(v.first_problem().map(|p| p.position), Some(4));
        assert_eq!(v.problem_count(), 1);
    }

    #[test]
    fn the_largest_version_and_position_are_problems_not_overflows() {
        let (first, hash) = record(1, 1, u64::MAX, 1, &Hash::default());
        let (second, hash) = record(2, 1, 0, 2, &hash);
        let (third, _) = record(u64::MAX, 2, 1, 3, &hash);
        let (fourth, _) = record(1, 3, 1, 4, &hash);
        let report = verify(&[(1, first), (2, second), (u64::MAX, third), (1, fourth)]);
        let found = reasons(&report);
        assert!(
            found
                .iter()
                .any(|(p, r)| *p == 2 && r.contains("follows version")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(p, r)| *p == 1 && r.contains("out of order")),
            "{found:?}"
        );
    }

    #[test]
    fn one_altered_byte_is_one_hash_mismatch_at_its_position() {
        let mut records = chain(5);
        // The event id of the third record: altered, it still decodes.
        let id = *uuid::Uuid::from_u128(3).as_bytes();
        let at = records[2]
            .windows(16)
            .position(|w| w == id)
            .expect("the record holds its event id");
        records[2][at] ^= 1;
        let report = verify(&numbered(records));
        assert!(!report.ok);
        let problems = reasons(&report);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, 3);
        assert!(problems[0].1.starts_with("hash mismatch"), "{problems:?}");
        assert_eq!(report.summary_json()["first_bad_position"], 3);
    }

    #[test]
    fn a_missing_record_is_a_gap_and_a_broken_chain() {
        let mut records = numbered(chain(5));
        records.remove(2);
        let problems = reasons(&verify(&records));
        assert_eq!(problems[0].0, 4, "{problems:?}");
        assert!(problems[0].1.starts_with("gap: expected position 3"));
        assert!(problems
            .iter()
            .any(|(p, r)| *p == 4 && r.starts_with("broken chain")));
        assert!(problems
            .iter()
            .any(|(_, r)| r.contains("version 4 follows version 2")));
    }

    #[test]
    fn a_record_chained_elsewhere_breaks_the_chain() {
        let mut records = chain(3);
        let (forged, _) = record(2, 1, 2, 2, &Hash([7; 32]));
        records[1] = forged;
        // Its own link is wrong, and the next record's link to it: two problems.
        let problems = reasons(&verify(&numbered(records)));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!((problems[0].0, problems[1].0), (2, 3));
        assert!(problems.iter().all(|(_, r)| r.starts_with("broken chain")));
    }

    #[test]
    fn a_replayed_event_id_and_a_misplaced_record_are_named() {
        let (one, h1) = record(1, 1, 1, 1, &Hash::default());
        let (two, h2) = record(2, 2, 1, 1, &h1);
        let (three, _) = record(9, 3, 1, 3, &h2);
        let problems = reasons(&verify(&[(1, one), (2, two), (3, three)]));
        assert_eq!(
            problems,
            vec![
                (
                    2,
                    "duplicate event_id 00000000-0000-0000-0000-000000000001".into()
                ),
                (3, "record says position 9, stored under 3".into()),
            ]
        );
    }

    #[test]
    fn unreadable_and_truncated_records_are_problems_not_panics() {
        let mut records = numbered(chain(3));
        records[1].1.truncate(10);
        let mut v = Verifier::new();
        for (key, bytes) in &records {
            v.push(*key, bytes);
        }
        v.unreadable(4, "io error".into());
        let report = v.finish();
        let problems = reasons(&report);
        assert!(problems[0].1.starts_with("bad encoding"), "{problems:?}");
        assert!(problems
            .iter()
            .any(|(p, r)| *p == 4 && r == "unreadable: io error"));
    }

    #[test]
    fn the_count_of_problems_is_exact_beyond_the_ones_kept() {
        let records: Vec<(u64, Vec<u8>)> = chain(MAX_PROBLEMS as u64 + 50)
            .into_iter()
            .enumerate()
            // Every record stored one key too far: every one a gap (or out of order).
            .map(|(i, r)| (i as u64 + 2, r))
            .collect();
        let report = verify(&records);
        assert_eq!(report.problems.len(), MAX_PROBLEMS);
        assert!(report.problem_count > MAX_PROBLEMS as u64);
        assert_eq!(
            report.summary_json()["problems"],
            serde_json::json!(report.problem_count)
        );
    }

    #[test]
    fn the_tree_over_the_records_is_held_to_the_heads_signed_for_it() {
        use crate::tree::{Frontier, TreeHead};
        let records = chain(10);
        let mut roots = vec![];
        let mut f = Frontier::new();
        for r in &records {
            f.push(leaf_hash(r));
            roots.push(f.root());
        }
        let head = |size: u64, root: Hash| TreeHead {
            tree_size: size,
            root_hash: root,
            timestamp_ms: 0,
        };
        let run = |heads: Vec<TreeHead>| {
            let mut v = Verifier::new();
            v.expect_heads(heads);
            for (key, bytes) in numbered(records.clone()) {
                v.push(key, &bytes);
            }
            v.finish()
        };
        let sound = run(vec![head(4, roots[3]), head(10, roots[9])]);
        assert!(sound.ok, "{sound:?}");
        assert_eq!(sound.tree_root, roots[9]);
        // A head beyond the records: some were withheld or lost.
        let short = run(vec![head(10, roots[9]), head(12, Hash([1; 32]))]);
        assert_eq!(short.first_inconsistent_tree_size, Some(12));
        assert!(short.problems[0].reason.starts_with("missing"), "{short:?}");
        // The same head, with the reading cut short by the source: not checked, not
        // taken for records that fail it.
        let mut v = Verifier::new();
        v.expect_heads(vec![head(4, roots[3]), head(10, roots[9])]);
        for (key, bytes) in numbered(records.clone()).into_iter().take(6) {
            v.push(key, &bytes);
        }
        v.unreadable(7, "the server answered 503".into());
        let cut = v.finish();
        assert!(!cut.ok && cut.read_failed, "{cut:?}");
        assert_eq!(cut.first_inconsistent_tree_size, None, "{cut:?}");
        assert!(cut.problems[1].reason.starts_with("not checked"), "{cut:?}");
        // A head whose root these records do not give: named by its size.
        let forked = run(vec![
            head(4, roots[3]),
            head(7, roots[5]),
            head(9, Hash([2; 32])),
        ]);
        assert_eq!(forked.first_inconsistent_tree_size, Some(7));
        assert_eq!(forked.problem_count, 2);
        assert_eq!(forked.summary_json()["first_inconsistent_tree_size"], 7);
        // A head of no records holds the empty tree's root, or none of this log's.
        let empty = run(vec![head(0, crate::tree::EMPTY_ROOT), head(4, roots[3])]);
        assert!(empty.ok, "{empty:?}");
        let not_empty = run(vec![head(0, Hash([3; 32])), head(4, roots[3])]);
        assert_eq!(
            not_empty.first_inconsistent_tree_size,
            Some(0),
            "{not_empty:?}"
        );

        // Read as the tree reaches them: sound heads pass, one that cannot be read or
        // comes out of order is a problem and ends the heads.
        let streamed = |heads: Vec<HeadRead>| {
            let mut v = Verifier::new();
            v.expect_heads_in_order(Box::new(heads.into_iter()));
            for (key, bytes) in numbered(records.clone()) {
                v.push(key, &bytes);
            }
            v.finish()
        };
        let sound = streamed(vec![Ok(head(4, roots[3])), Ok(head(10, roots[9]))]);
        assert!(sound.ok, "{sound:?}");
        let unreadable = streamed(vec![
            Ok(head(4, roots[3])),
            Err("the head of size 6: bad signature".into()),
            Ok(head(9, Hash([2; 32]))),
        ]);
        assert_eq!(unreadable.problem_count, 1, "{unreadable:?}");
        assert!(unreadable.problems[0].reason.contains("bad signature"));
        let backwards = streamed(vec![Ok(head(9, roots[8])), Ok(head(4, roots[3]))]);
        assert_eq!(backwards.problem_count, 1, "{backwards:?}");
        assert!(backwards.problems[0].reason.contains("increasing"));
    }
}
