//! The auditor's side of provable history, against a server they need not trust: every
//! head is checked with the public key the auditor holds, every proof is checked here,
//! and the records are hashed here.
//!
//! - [`check_checkpoint`]: the server's latest head extends the one the auditor accepted
//!   last time (a consistency proof), and the records the server serves give the roots
//!   of every head it signed; the new head is then kept as the auditor's checkpoint.
//! - [`prove`]: one record is in the tree of a signed head (an inclusion proof).
//! - [`compare`]: two auditors' checkpoints describe one history.
//!
//! The key: the one the auditor gives (`--public-key`, the strong form), else the one
//! pinned beside the checkpoint file (`FILE.pub`, [`pin_path`]) at an earlier visit, else
//! the server's own, trusted on first use: [`key_to_hold`]. A visit that holds pins the
//! key it was checked with, so the next one holds the server to it.

use super::chain;
use super::source::Source;
use super::ManifestHead;
use crate::error::Error;
use base64::Engine;
use idledger_domain::Hash;
use idledger_replay::tree::{
    check_consistency, check_inclusion, leaf_hash, LogPublicKey, SignedTreeHead, TreeHead,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The largest answer about heads and proofs read: a proof is at most 130 hashes, a page
/// of heads 1000 checkpoints of a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// A base64 hash from a proof or a head.
pub fn hash_of(text: &str) -> Result<Hash, String> {
    let bytes = B64
        .decode(text)
        .map_err(|_| format!("{text:?} is not base64"))?;
    Ok(Hash(
        bytes
            .try_into()
            .map_err(|_| "a hash is 32 bytes".to_owned())?,
    ))
}

/// A server read with a token, on a runtime of its own (the CLI is synchronous).
pub struct Server {
    url: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Server {
    /// The server at `url`, read with `token`.
    pub fn new(url: &str, token: &str) -> Result<Server, Error> {
        Ok(Server {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// The server as a record source.
    pub fn source(&self) -> Source {
        Source::Server {
            url: self.url.clone(),
            token: self.token.clone(),
        }
    }

    /// The body at `path`. A refusal (4xx) is the server's answer, kept as a finding
    /// (`Ok(Err)`); not reaching it, or its failing (5xx), means nothing could be checked.
    fn get(&self, path: &str) -> Result<Finding<String>, Error> {
        self.rt.block_on(async {
            let other = |e: reqwest::Error| Error::Other(e.without_url().to_string());
            let url = format!("{}{path}", self.url);
            let resp = super::source::get_when_free(&self.http, &url, &self.token)
                .await
                .map_err(other)?;
            let status = resp.status();
            // Too large is the server's answer, and a finding: heads and proofs are small.
            let Some(body) = super::source::body_at_most(resp, MAX_ANSWER_BYTES).await? else {
                return Ok(Err(format!(
                    "{path}: the server answered more than {MAX_ANSWER_BYTES} bytes"
                )));
            };
            let body = String::from_utf8_lossy(&body).into_owned();
            if status.is_client_error() {
                return Ok(Err(format!("{path}: the server answered {status}: {body}")));
            }
            if !status.is_success() {
                return Err(Error::Other(format!("{path}: {status}: {body}")));
            }
            Ok(Ok(body))
        })
    }

    fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Finding<T>, Error> {
        Ok(self.get(path)?.and_then(|body| {
            serde_json::from_str(&body).map_err(|e| format!("{path}: the server's answer: {e}"))
        }))
    }

    /// The server's public key (to be compared with the one the auditor holds, never
    /// trusted in its place unless the auditor holds none: see [`key_to_hold`]).
    pub fn public_key(&self) -> Result<LogPublicKey, Error> {
        self.public_key_answer()?.map_err(Error::Other)
    }

    /// The server's public key, or why its answer is none (a finding).
    fn public_key_answer(&self) -> Result<Finding<LogPublicKey>, Error> {
        Ok(self.get("/v1/log/public-key")?.and_then(|text| {
            LogPublicKey::parse(&text).map_err(|e| format!("the server's public key: {e}"))
        }))
    }

    fn latest_head(&self, key: &LogPublicKey) -> Result<Finding<SignedTreeHead>, Error> {
        Ok(self.get("/v1/log/sth")?.and_then(|note| {
            key.open(&note)
                .map_err(|e| format!("the server's latest head: {e}"))
        }))
    }

    fn consistency(&self, from: u64, to: u64) -> Result<Finding<Vec<Hash>>, Error> {
        let path = format!("/v1/log/proof/consistency?from={from}&to={to}");
        Ok(self
            .json::<ProofBody>(&path)?
            .and_then(|proof| proof.hashes())
            .map_err(|e| {
                format!(
                    "no proof that the tree of {from} records is a prefix of the tree of {to}: {e}"
                )
            }))
    }

    /// One page of the heads the server kept, of trees larger than `after`, each checked
    /// with the key; and the cursor of the next page.
    fn heads_page(&self, key: &LogPublicKey, after: u64) -> Result<Finding<HeadsRead>, Error> {
        let page: HeadsPage = match self.json(&format!("/v1/log/sths?after={after}&limit=1000"))? {
            Ok(page) => page,
            Err(why) => return Ok(Err(why)),
        };
        let mut heads = Vec::with_capacity(page.items.len());
        for item in &page.items {
            match key.open(&item.checkpoint) {
                Ok(head) => heads.push(head.head),
                Err(e) => {
                    return Ok(Err(format!(
                        "the server's head of size {}: {e}",
                        item.tree_size
                    )))
                }
            }
        }
        match page.next.and_then(|n| n.parse::<u64>().ok()) {
            // A cursor that does not move on, or moves on past nothing, would page for
            // ever (an empty page is the last).
            Some(n) if n <= after || page.items.is_empty() => Ok(Err(format!(
                "the server's list of heads does not move on past {after}"
            ))),
            next => Ok(Ok((heads, next))),
        }
    }
}

/// A page of heads, and the cursor of the next page.
type HeadsRead = (Vec<TreeHead>, Option<u64>);

/// The heads the server kept, read a page at a time as the records reach them (a head a
/// second of growth, for years, does not fit in memory), merged in size order with
/// `others` (the server's latest, the auditor's checkpoint). A head that does not verify,
/// or a list that does not move on, is a finding the verifier reports; not reaching the
/// server ends the heads and is kept in `unreached`: nothing beyond could be checked.
struct KeptHeads {
    server: Server,
    key: LogPublicKey,
    page: std::collections::VecDeque<TreeHead>,
    /// The cursor of the next page; `None` once the last was read.
    next: Option<u64>,
    others: std::collections::VecDeque<TreeHead>,
    /// The latest head's size when the visit began: the feed reads at least that far.
    up_to: u64,
    unreached: std::sync::Arc<std::sync::Mutex<Option<Error>>>,
}

impl Iterator for KeptHeads {
    type Item = idledger_replay::verify::HeadRead;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() {
            if let Some(after) = self.next.take() {
                match self.server.heads_page(&self.key, after) {
                    Ok(Ok((heads, next))) => {
                        // Heads signed since the visit began may be of records the feed
                        // read no more: they wait for the next visit.
                        let beyond = heads.iter().any(|h| h.tree_size > self.up_to);
                        let up_to = self.up_to;
                        self.page
                            .extend(heads.into_iter().filter(|h| h.tree_size <= up_to));
                        self.next = next.filter(|_| !beyond);
                    }
                    Ok(Err(finding)) => return Some(Err(finding)),
                    Err(e) => {
                        *self.unreached.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        return None;
                    }
                }
            }
        }
        let kept_first = match (self.page.front(), self.others.front()) {
            (Some(k), Some(o)) => k.tree_size <= o.tree_size,
            (k, _) => k.is_some(),
        };
        let head = if kept_first {
            self.page.pop_front()
        } else {
            self.others.pop_front()
        };
        head.map(Ok)
    }
}

#[derive(Deserialize)]
struct ProofBody {
    hashes: Vec<String>,
}

impl ProofBody {
    fn hashes(&self) -> Finding<Vec<Hash>> {
        self.hashes.iter().map(|h| hash_of(h)).collect()
    }
}

/// What the server answered, or why its answer proves nothing: a finding the report
/// carries (exit 1), unlike an [`Error`] (nothing could be checked, exit 2).
type Finding<T> = Result<T, String>;

#[derive(Deserialize)]
struct HeadItem {
    tree_size: u64,
    checkpoint: String,
}

#[derive(Deserialize)]
struct HeadsPage {
    items: Vec<HeadItem>,
    next: Option<String>,
}

/// Where the key a check holds the server to came from. Reported, so that a script can
/// tell a key the auditor brought from one taken on the server's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFrom {
    /// `--public-key`: a key the auditor holds.
    Given,
    /// The key pinned beside the checkpoint file by an earlier visit.
    Pinned,
    /// The server's own key, trusted on this first visit and pinned if the visit holds.
    FirstUse,
    /// The server's own key, not pinned: it proves only that the server signed a head,
    /// not that the head is the log's.
    Server,
}

/// The key a check holds the server to, and where it came from.
#[derive(Clone, Debug)]
pub struct HeldKey {
    /// The log's public key.
    pub key: LogPublicKey,
    /// Where it came from.
    pub from: KeyFrom,
    /// The checkpoint file it is pinned beside (or to be pinned beside, if the visit
    /// holds), if any.
    pin: Option<PathBuf>,
    /// Whether the pin file is still to be written.
    unpinned: bool,
}

/// The file that pins the log's key beside a checkpoint file: `FILE.pub`, holding the key
/// in the text form `idledger log-key` prints.
pub fn pin_path(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// The key pinned beside `checkpoint`, if one is.
pub fn pinned_key(checkpoint: &Path) -> Result<Option<LogPublicKey>, Error> {
    let path = pin_path(checkpoint);
    match std::fs::read_to_string(&path) {
        Ok(text) => LogPublicKey::parse(&text)
            .map(Some)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Other(format!("{}: {e}", path.display()))),
    }
}

/// The key to hold `server` to: `given` (which must be the one pinned beside
/// `checkpoint`, if one is: the auditor's own files cannot disagree about the log they
/// follow), else the pinned one (the server's must be the same: a log's key never
/// changes, so another key is another log, a finding), else the server's own.
pub fn key_to_hold(
    server: &Server,
    given: Option<LogPublicKey>,
    checkpoint: Option<&Path>,
) -> Result<Finding<HeldKey>, Error> {
    let pinned = checkpoint.map(pinned_key).transpose()?.flatten();
    let held = |key, from| HeldKey {
        key,
        from,
        pin: checkpoint.map(Path::to_path_buf),
        unpinned: pinned.is_none(),
    };
    let pin_name = || checkpoint.map(|c| pin_path(c).display().to_string());
    if let Some(given) = given {
        if let Some(pinned) = pinned.as_ref().filter(|p| **p != given) {
            return Err(Error::Other(format!(
                "--public-key {given} is not the key pinned in {} ({pinned}): a log's key never changes; if this is another log, keep its checkpoint in another file",
                pin_name().unwrap_or_default()
            )));
        }
        return Ok(Ok(held(given, KeyFrom::Given)));
    }
    let served = server.public_key_answer()?;
    if let Some(pinned) = pinned.clone() {
        return Ok(match served {
            Ok(served) if served != pinned => Err(format!(
                "the server's public key {served} is not the key pinned in {} ({pinned}) at an earlier visit: a log's key never changes, so this server shows another log (or the pin was trusted from an impostor: check the key out of band, `idledger log-key` on the server's machine)",
                pin_name().unwrap_or_default()
            )),
            // A server that will not say its key is still held to the pinned one: every
            // head it shows is checked with it.
            _ => Ok(held(pinned, KeyFrom::Pinned)),
        });
    }
    let served = served.map_err(|why| {
        Error::Other(format!(
            "no --public-key given, none pinned beside the checkpoint, and {why}"
        ))
    })?;
    Ok(Ok(held(served, KeyFrom::Server)))
}

impl HeldKey {
    /// The pin file to write once a visit holds, if any.
    fn to_pin(&self) -> Option<&Path> {
        self.pin.as_deref().filter(|_| self.unpinned)
    }
}

/// Why a head does not extend another: `None` when it does.
fn extends(
    server: Option<&Server>,
    old: &SignedTreeHead,
    new: &SignedTreeHead,
) -> Result<Option<String>, Error> {
    let (o, n) = (&old.head, &new.head);
    if o.tree_size > n.tree_size {
        return Ok(Some(format!(
            "the tree shrank from {} to {} records",
            o.tree_size, n.tree_size
        )));
    }
    if o.tree_size == n.tree_size {
        return Ok((o.root_hash != n.root_hash).then(|| {
            format!(
                "two different roots were signed for tree size {}",
                o.tree_size
            )
        }));
    }
    if o.tree_size == 0 {
        // Every tree extends the empty one, whose root is fixed: a head of size 0 with
        // another root was never one of this log's.
        return Ok((o.root_hash != idledger_replay::tree::EMPTY_ROOT).then(|| {
            "a head of size 0 was signed with a root that is not the empty tree's".into()
        }));
    }
    let server = server.ok_or_else(|| {
        Error::Other("different tree sizes: give --server to fetch the consistency proof".into())
    })?;
    let proof = match server.consistency(o.tree_size, n.tree_size)? {
        Ok(proof) => proof,
        Err(why) => return Ok(Some(why)),
    };
    Ok(
        check_consistency(&proof, o.tree_size, &o.root_hash, n.tree_size, &n.root_hash)
            .err()
            .map(|e| {
                format!(
                    "the tree of {} records is not a prefix of the tree of {}: {e}",
                    o.tree_size, n.tree_size
                )
            }),
    )
}

/// `verify --checkpoint`'s report.
#[derive(Debug, Serialize)]
pub struct CheckpointReport {
    /// Everything holds; the new head was kept as the checkpoint.
    pub ok: bool,
    /// The checkpoint accepted before, if any.
    pub previous_tree_size: Option<u64>,
    /// The server's latest head's (none when it showed no head that verifies).
    pub tree_size: Option<u64>,
    /// The smallest signed tree size the server's history contradicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_inconsistent_tree_size: Option<u64>,
    /// What is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the key the server was held to came from.
    pub key: KeyFrom,
    /// The whole log's check (chain and tree); null when there was no head to hold it to.
    pub log: serde_json::Value,
}

impl CheckpointReport {
    /// A visit that failed before the log was read.
    fn failed(key: KeyFrom, previous_tree_size: Option<u64>, reason: String) -> Self {
        CheckpointReport {
            ok: false,
            previous_tree_size,
            tree_size: None,
            first_inconsistent_tree_size: None,
            reason: Some(reason),
            key,
            log: serde_json::Value::Null,
        }
    }
}

/// An auditor's visit with the checkpoint in `file`: the key to hold the server to found
/// ([`key_to_hold`]), then [`check_checkpoint`].
pub fn visit(
    server: &Server,
    given: Option<LogPublicKey>,
    file: &Path,
    on_position: impl FnMut(u64),
) -> Result<CheckpointReport, Error> {
    match key_to_hold(server, given, Some(file))? {
        Ok(held) => check_checkpoint(server, &held, file, on_position),
        Err(why) => Ok(CheckpointReport::failed(KeyFrom::Pinned, None, why)),
    }
}

/// Checks the server's history against the checkpoint in `file` (if any) and the records
/// against every head the server signed, with `held`'s key; on success writes the
/// server's latest head to `file`, and pins the key beside it if none was.
pub fn check_checkpoint(
    server: &Server,
    held: &HeldKey,
    file: &Path,
    on_position: impl FnMut(u64),
) -> Result<CheckpointReport, Error> {
    let key = &held.key;
    // The server's key taken on a visit that names a checkpoint is trusted on first use:
    // it is pinned below if the visit holds.
    let from = match held.from {
        KeyFrom::Server => KeyFrom::FirstUse,
        from => from,
    };
    let previous = match std::fs::read_to_string(file) {
        Ok(text) => match key.open(&text) {
            Ok(head) => Some(head),
            // The head accepted before does not hold under the key: someone changed the
            // file, or it is another log's. A finding, not a check that could not run.
            Err(e) => {
                return Ok(CheckpointReport::failed(
                    from,
                    None,
                    format!("{}: {e}", file.display()),
                ))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::Other(format!("{}: {e}", file.display()))),
    };
    let latest = match server.latest_head(key)? {
        Ok(head) => head,
        Err(why) => {
            return Ok(CheckpointReport::failed(
                from,
                previous.map(|h| h.head.tree_size),
                why,
            ))
        }
    };
    let mut first_inconsistent = None;
    let mut reason = None;
    if let Some(old) = &previous {
        if let Some(why) = extends(Some(server), old, &latest)? {
            first_inconsistent = Some(old.head.tree_size.min(latest.head.tree_size));
            reason = Some(why);
        }
    }
    // The records must give the root of every head: the auditor's, the latest, and each
    // the server kept.
    let mut others: Vec<TreeHead> = previous.iter().map(|h| h.head).collect();
    others.push(latest.head);
    others.sort_by_key(|h| h.tree_size);
    let unreached = std::sync::Arc::new(std::sync::Mutex::new(None));
    let heads = KeptHeads {
        server: Server::new(&server.url, &server.token)?,
        key: key.clone(),
        page: Default::default(),
        next: Some(0),
        others: others.into(),
        up_to: latest.head.tree_size,
        unreached: unreached.clone(),
    };
    let log = chain::verify_against(&server.source(), Box::new(heads), on_position);
    if let Some(e) = unreached.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    // A feed that stopped answering (busy, cut off) checked nothing beyond where it
    // stopped: an error, not a history found wanting, unless it was found wanting before.
    let stopped = log.stopped_reading().filter(|_| reason.is_none());
    if let Some(first) = stopped {
        return Err(Error::Other(first.reason.clone()));
    }
    if let Some(size) = log.first_inconsistent_tree_size {
        first_inconsistent = Some(first_inconsistent.map_or(size, |s: u64| s.min(size)));
        reason.get_or_insert_with(|| {
            format!(
                "the records the server serves do not give the root it signed for tree size {size}"
            )
        });
    }
    if reason.is_none() && !log.ok {
        reason = log.first_bad().map(|p| p.reason.clone());
    }
    let ok = reason.is_none();
    if ok {
        // The pin first: a crash between the two leaves a pinned key and the checkpoint
        // before (which the next visit checks with it), never a new checkpoint under a
        // key nothing pins. Each write leaves the old file or the new one.
        if let Some(checkpoint) = held.to_pin() {
            crate::durable::replace_whole(
                &pin_path(checkpoint),
                format!("{}\n", held.key).as_bytes(),
            )?;
        }
        crate::durable::replace_whole(file, latest.to_note().as_bytes())?;
    }
    Ok(CheckpointReport {
        ok,
        previous_tree_size: previous.map(|h| h.head.tree_size),
        tree_size: Some(latest.head.tree_size),
        first_inconsistent_tree_size: first_inconsistent,
        reason,
        key: from,
        log: log.summary_json(),
    })
}

/// `prove`'s report.
#[derive(Debug, Serialize)]
pub struct ProveReport {
    /// The record is in the signed tree.
    pub ok: bool,
    /// Its position.
    pub position: u64,
    /// The size of the signed head it was proven in.
    pub tree_size: Option<u64>,
    /// That head's root, base64.
    pub root_hash: Option<String>,
    /// The record's event id.
    pub event_id: Option<String>,
    /// Its stream.
    pub stream: Option<String>,
    /// Its kind.
    pub kind: Option<String>,
    /// What failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the key the head was checked with came from: `server` proves only that the
    /// server signed a head that holds the record.
    pub key: KeyFrom,
}

impl ProveReport {
    fn new(position: u64, key: KeyFrom) -> Self {
        ProveReport {
            ok: false,
            position,
            tree_size: None,
            root_hash: None,
            event_id: None,
            stream: None,
            kind: None,
            reason: None,
            key,
        }
    }
}

#[derive(Deserialize)]
struct EventsPage {
    items: Vec<EventItem>,
}

#[derive(Deserialize)]
struct EventItem {
    position: u64,
    record: String,
}

/// [`prove`] with the key [`key_to_hold`] finds: `given`, else the one pinned beside
/// `checkpoint`, else the server's own (never pinned by `prove`).
pub fn prove_with(
    server: &Server,
    given: Option<LogPublicKey>,
    position: u64,
    checkpoint: Option<&Path>,
) -> Result<ProveReport, Error> {
    if position == 0 {
        return Err(Error::Other("--position: from 1".into()));
    }
    match key_to_hold(server, given, checkpoint)? {
        Ok(held) => prove(server, &held, position, checkpoint),
        Err(why) => Ok(ProveReport {
            reason: Some(why),
            ..ProveReport::new(position, KeyFrom::Pinned)
        }),
    }
}

/// Fetches the record at `position` and proves it in the server's latest signed head,
/// checking everything here with `held`'s key; with `checkpoint`, that head must also
/// extend it.
pub fn prove(
    server: &Server,
    held: &HeldKey,
    position: u64,
    checkpoint: Option<&Path>,
) -> Result<ProveReport, Error> {
    if position == 0 {
        return Err(Error::Other("--position: from 1".into()));
    }
    let key = &held.key;
    let old = match checkpoint {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::Other(format!("{}: {e}", file.display())))?;
            match key.open(&text) {
                Ok(head) => Some(head),
                // See `check_checkpoint`: a finding.
                Err(e) => {
                    return Ok(ProveReport {
                        reason: Some(format!("{}: {e}", file.display())),
                        ..ProveReport::new(position, held.from)
                    })
                }
            }
        }
    };
    let mut report = ProveReport::new(position, held.from);
    if let Err(why) = prove_into(&mut report, server, key, old.as_ref())? {
        report.reason = Some(why);
    }
    report.ok = report.reason.is_none();
    Ok(report)
}

/// How long `prove` waits for a signed head to cover a record just appended.
const COVER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Fills `report` as far as the server's answers hold.
fn prove_into(
    report: &mut ProveReport,
    server: &Server,
    key: &LogPublicKey,
    old: Option<&SignedTreeHead>,
) -> Result<Finding<()>, Error> {
    let position = report.position;
    let page =
        server.json::<EventsPage>(&format!("/v1/events?from_position={position}&limit=1"))?;
    let record = match page.and_then(|page| {
        let item = page
            .items
            .into_iter()
            .find(|i| i.position == position)
            .ok_or_else(|| format!("the server has no record at position {position}"))?;
        B64.decode(&item.record)
            .map_err(|_| "the record is not base64".to_owned())
    }) {
        Ok(record) => record,
        Err(why) => return Ok(Err(why)),
    };
    let env = match idledger_domain::decode_record(&record) {
        Ok(env) => env,
        Err(e) => return Ok(Err(format!("the record does not decode: {e}"))),
    };
    report.event_id = Some(env.event_id.to_string());
    report.stream = Some(env.stream.to_string());
    report.kind = Some(env.kind().to_owned());
    if env.position != position {
        return Ok(Err(format!("the record says position {}", env.position)));
    }
    // The server signs at most every `sth_interval_ms`: a record appended a moment ago is
    // in a head soon. Waited for a little, then said to be unanswered, not a finding.
    let deadline = std::time::Instant::now() + COVER_PATIENCE;
    let latest = loop {
        let latest = match server.latest_head(key)? {
            Ok(head) => head,
            Err(why) => return Ok(Err(why)),
        };
        if latest.head.tree_size >= position || std::time::Instant::now() >= deadline {
            break latest;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let head = latest.head;
    report.tree_size = Some(head.tree_size);
    report.root_hash = Some(B64.encode(head.root_hash.0));
    if let Some(old) = old {
        if let Some(why) = extends(Some(server), old, &latest)? {
            return Ok(Err(why));
        }
    }
    if position > head.tree_size {
        return Err(Error::Other(format!(
            "position {position} is not yet in the latest signed head ({} records); retry once the server has signed a later one",
            head.tree_size
        )));
    }
    let proof = server
        .json::<ProofBody>(&format!(
            "/v1/log/proof/inclusion?position={position}&tree_size={}",
            head.tree_size
        ))?
        .and_then(|p| p.hashes());
    let checked = proof.and_then(|hashes| {
        check_inclusion(
            &hashes,
            head.tree_size,
            &head.root_hash,
            position - 1,
            &leaf_hash(&record),
        )
        .map_err(|e| format!("the inclusion proof: {e}"))
    });
    Ok(checked)
}

/// `checkpoint compare`'s report.
#[derive(Debug, Serialize)]
pub struct CompareReport {
    /// The two checkpoints describe one history.
    pub ok: bool,
    /// The first one's tree size (null when it does not hold under the key).
    pub a_tree_size: Option<u64>,
    /// The second one's.
    pub b_tree_size: Option<u64>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the key the checkpoints were checked with came from.
    pub key: KeyFrom,
}

/// Compares the checkpoints in files `a` and `b` (see [`compare`]) with `given`, else
/// with the key pinned beside them: beside both, the same key (two auditors shown two
/// keys were shown two logs, a finding); beside one, that one (the other checkpoint must
/// still verify with it). With neither, nothing says which log they are of: an error
/// naming `--public-key`.
pub fn compare_files(
    a: &Path,
    b: &Path,
    given: Option<LogPublicKey>,
    server: Option<&Server>,
) -> Result<CompareReport, Error> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
    };
    let (text_a, text_b) = (read(a)?, read(b)?);
    if let Some(key) = given {
        return compare(&text_a, &text_b, &key, KeyFrom::Given, server);
    }
    let key = match (pinned_key(a)?, pinned_key(b)?) {
        (Some(ka), Some(kb)) if ka != kb => {
            return Ok(CompareReport {
                ok: false,
                a_tree_size: None,
                b_tree_size: None,
                reason: Some(format!(
                    "the keys pinned beside the two checkpoints differ ({}: {ka}; {}: {kb}): they were accepted from two logs",
                    pin_path(a).display(),
                    pin_path(b).display()
                )),
                key: KeyFrom::Pinned,
            })
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => {
            return Err(Error::Other(format!(
                "no key to check the checkpoints with: give --public-key KEY (the log's key, as `idledger log-key` prints it), or pin it beside a checkpoint ({} or {}; `idledger verify --server URL --checkpoint FILE` pins it)",
                pin_path(a).display(),
                pin_path(b).display()
            )))
        }
    };
    compare(&text_a, &text_b, &key, KeyFrom::Pinned, server)
}

/// Compares two checkpoints: the same size must have the same root; of different sizes,
/// the smaller must be a prefix of the larger (the proof fetched from `server`).
pub fn compare(
    a: &str,
    b: &str,
    key: &LogPublicKey,
    from: KeyFrom,
    server: Option<&Server>,
) -> Result<CompareReport, Error> {
    let (a, b) = match (key.open(a), key.open(b)) {
        (Ok(a), Ok(b)) => (a, b),
        // A checkpoint the key did not sign describes no history of this log: the finding.
        (a, b) => {
            let reason = [("A", &a), ("B", &b)]
                .iter()
                .filter_map(|(which, r)| {
                    r.as_ref().err().map(|e| format!("checkpoint {which}: {e}"))
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(CompareReport {
                ok: false,
                a_tree_size: a.ok().map(|h| h.head.tree_size),
                b_tree_size: b.ok().map(|h| h.head.tree_size),
                reason: Some(reason),
                key: from,
            });
        }
    };
    let (small, large) = if a.head.tree_size <= b.head.tree_size {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let reason = extends(server, small, large)?;
    Ok(CompareReport {
        ok: reason.is_none(),
        a_tree_size: Some(a.head.tree_size),
        b_tree_size: Some(b.head.tree_size),
        reason,
        key: from,
    })
}

/// The manifest's head for an export that read a stopped server's data dir to
/// `log_position`: the first head the server kept that covers it, with the consistency
/// proof to it. None when no head covers it yet (the server never signed past it).
pub fn cover_in_data_dir(dir: &Path, log_position: u64) -> Result<Option<ManifestHead>, Error> {
    if log_position == 0 {
        return Ok(None);
    }
    let store = crate::store::sled_log::open_raw(dir)?;
    let head = store.last_position()?;
    let found = crate::notary::covering_head(dir, log_position, head, |p| store.record(p))
        .map_err(|e| Error::Other(e.to_string()))?;
    Ok(found.map(|(head, proof)| manifest_head(&head, &proof)))
}

/// A manifest's head: `head`, and the consistency proof from the export's tree to it.
pub fn manifest_head(head: &SignedTreeHead, proof: &[Hash]) -> ManifestHead {
    ManifestHead {
        checkpoint: head.to_note(),
        consistency: proof.iter().map(|h| B64.encode(h.0)).collect(),
    }
}

impl Server {
    /// The manifest's head for an export that read this server's feed to `log_position`:
    /// the server's first head covering the position (signed on request when none does
    /// yet; asked again for up to `patience` while its tree trails the log), with the
    /// consistency proof to it. Checked by `verify-export`, not here: the exporter needs
    /// no key.
    pub fn cover(
        &self,
        log_position: u64,
        patience: std::time::Duration,
    ) -> Result<Option<ManifestHead>, Error> {
        if log_position == 0 {
            return Ok(None);
        }
        let deadline = std::time::Instant::now() + patience;
        // A server that knows no `covering` (an earlier build) refuses it as an unknown
        // field: its latest head is waited for instead. Any other refusal is reported.
        let mut covering = true;
        loop {
            let path = if covering {
                format!("/v1/log/sth?covering={log_position}")
            } else {
                "/v1/log/sth".to_owned()
            };
            let note = match self.get(&path) {
                Ok(Ok(note)) => note,
                Ok(Err(why)) if covering && why.contains("unknown field") => {
                    covering = false;
                    continue;
                }
                // The exporter checks nothing: a refusal here is an error to report.
                Ok(Err(why)) => return Err(Error::Other(why)),
                // The server's own trouble (its tree a commit behind the log, say): asked
                // again until the deadline, then the export goes without a head.
                Err(e) => {
                    if std::time::Instant::now() >= deadline {
                        tracing::warn!(error = %e, "no signed tree head for the export's manifest");
                        return Ok(None);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            let size: u64 = note
                .lines()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Other("the server's latest head has no tree size".into()))?;
            if size >= log_position {
                let proof = if size == log_position {
                    Vec::new()
                } else {
                    self.consistency(log_position, size)?
                        .map_err(Error::Other)?
                };
                return Ok(Some(ManifestHead {
                    checkpoint: note,
                    consistency: proof.iter().map(|h| B64.encode(h.0)).collect(),
                }));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_replay::tree::{TreeHead, EMPTY_ROOT};

    fn signed(tree_size: u64, root_hash: Hash) -> SignedTreeHead {
        SignedTreeHead {
            origin: "idledger/test".into(),
            head: TreeHead {
                tree_size,
                root_hash,
                timestamp_ms: 0,
            },
            key_id: 0,
            signature: [0; 64],
        }
    }

    /// Every tree extends the empty one; a head of size 0 with another root is no head of
    /// any log, and no server need be asked to say so.
    #[test]
    fn only_the_empty_root_is_extended_by_every_tree() {
        let later = signed(5, Hash([1; 32]));
        assert_eq!(extends(None, &signed(0, EMPTY_ROOT), &later).unwrap(), None);
        let forged = extends(None, &signed(0, Hash([2; 32])), &later).unwrap();
        assert!(forged.is_some_and(|r| r.contains("size 0")));
    }
}
