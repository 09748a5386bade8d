//! `idledger backup` and `idledger restore`: a stopped server's data dir into one file, and
//! back into a new data dir, every part checked before anything is written.

use super::progress;
use crate::backup::{
    backup_data_dir, restore as restore_file, BackupSource, KeysNeeded, Manifest, UnsignedTail,
};
use crate::error::Error;
use clap::Args;
use idledger_domain::UserId;
use idledger_projections::users::UserStatus;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `idledger backup`.
#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// A stopped server's data directory, or `--server` (online, token of an admin or
    /// auditor in IDLEDGER_TOKEN).
    #[command(flatten)]
    pub from: super::DataDir,
    /// The backup file to write (it must not exist); with `--follow`, the copy's directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep a copy in the directory `--out` that follows the server's log: new records are
    /// added as they come, each checked against the chain; a restart resumes.
    #[arg(long, requires = "server")]
    pub follow: bool,
    /// With `--follow`: catch up with the log's head, then exit.
    #[arg(long, requires = "follow")]
    pub once: bool,
    /// With `--follow`: key store snapshots replaced more than this many days ago are
    /// removed (the newest stays), so deleted users' keys age out of the copy.
    #[arg(long, default_value_t = 30.0)]
    pub retain_days: f64,
    /// With `--follow`: how long to wait, once caught up, before asking again (ms).
    #[arg(long, default_value_t = 250)]
    pub interval_ms: u64,
    /// With `--follow`: records per sealed segment file of the copy.
    #[arg(long, default_value_t = crate::backup::follow::SEGMENT_RECORDS)]
    pub segment_records: u64,
}

/// Options of `idledger restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup: a file, or the directory of a `backup --follow` copy.
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into (new or empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A later backup (file or copy) or the live server's URL (token in IDLEDGER_TOKEN):
    /// restored users it shows deleted are named in a warning, since their data keys are
    /// back in the restored data dir.
    #[arg(long)]
    pub compare_with: Option<String>,
    /// The log's public key (its text, or a file holding it; `idledger log-key`, or
    /// `/v1/log/public-key`, taken apart from the backup): the backup's signed tree head
    /// must verify with it and name the root of the records restored.
    #[arg(long)]
    pub public_key: Option<String>,
    /// Restore a backup that holds sealed secrets but no key store (a copy's sealed
    /// segment, say) anyway: the records alone, every secret in them unreadable, and a
    /// new log key when served.
    #[arg(long)]
    pub without_keys: bool,
    /// Restore also the records after the backup's signed tree head (a `--follow` copy's
    /// last records, or an offline backup of a server that stopped before signing them):
    /// the log's key proves nothing of them.
    #[arg(long)]
    pub accept_unsigned_tail: bool,
}

fn refused(e: crate::backup::BackupError) -> Error {
    Error::Other(e.to_string())
}

/// The client backups download with: a server that stops answering (a stalled peer, a
/// proxy holding the connection) ends the download with an error, not a cron job that
/// hangs for ever on its half-written file.
fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| Error::Other(e.to_string()))
}

/// Downloads `GET /v1/backup` into the new file `out`, then checks all of it (a file that
/// does not check is removed).
async fn download(url: &str, token: &str, out: &std::path::Path) -> Result<Manifest, Error> {
    use std::io::Write;
    let mut r = http_client()?
        .get(format!("{}/v1/backup", url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| Error::Other(format!("{url}: {e}")))?;
    if !r.status().is_success() {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        return Err(Error::Other(format!("{url}/v1/backup: {status}: {text}")));
    }
    let through = r
        .headers()
        .get("x-idledger-log-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let pb = progress::bytes_bar("backup");
    let file = crate::backup::NewBackupFile::create(out)?;
    let mut w = std::io::BufWriter::new(file.file());
    let fetched = async {
        while let Some(piece) = r.chunk().await.map_err(|e| Error::Other(e.to_string()))? {
            w.write_all(&piece)?;
            pb.inc(piece.len() as u64);
        }
        w.flush()?;
        Ok::<_, Error>(())
    }
    .await;
    drop(w);
    pb.finish_and_clear();
    fetched?;
    // Checked whole before it takes its name: a file that does not check is never there.
    let manifest = crate::backup::read(std::fs::File::open(file.partial_path())?, |_, _| Ok(()))
        .map(|c| c.manifest)
        .map_err(refused)?;
    if through.is_some_and(|t| t != manifest.position) {
        return Err(Error::Other(format!(
            "the server promised position {through:?}, the file ends at {}",
            manifest.position
        )));
    }
    file.finish()?;
    Ok(manifest)
}

/// Records asked for in one increment, and their bytes at most: a follower's memory stays
/// bounded however far behind it starts and however large the records.
const INCREMENT: u64 = 50_000;
const INCREMENT_BYTES: u64 = 64 << 20;
/// The most an increment's body may hold: its records (one may pass `INCREMENT_BYTES` by
/// a record), a key store and a log key (each a section of at most 256 MiB).
const INCREMENT_MAX_BODY: u64 = INCREMENT_BYTES + (2 << 20) + (512 << 20);

/// Why one round of `--follow` did not add to the copy.
enum Round {
    /// Worth trying again (the server restarting, a cut connection).
    Again(String),
    /// Not (a refused token, a server whose log is shorter than the copy).
    Stop(Error),
    /// An earlier build, which knows no `exact_head`: ask without it (and wait for the
    /// server's paced head instead).
    NoExactHead,
}

/// Fetches one increment: the records after `from - 1`; answers it and the server's
/// head when it was asked.
async fn increment(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    from: u64,
    keystore: Option<&str>,
    exact_head: bool,
) -> Result<(Vec<u8>, u64), Round> {
    let mut url =
        format!("{base}/v1/backup?from={from}&limit={INCREMENT}&max_bytes={INCREMENT_BYTES}");
    if exact_head {
        url.push_str("&exact_head=true");
    }
    if let Some(k) = keystore {
        url.push_str("&keystore_sha256=");
        url.push_str(k);
    }
    let again = |e: reqwest::Error| Round::Again(e.without_url().to_string());
    let r = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(again)?;
    let status = r.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Round::Again(format!("{base} answered {status}")));
    }
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        if exact_head
            && status == reqwest::StatusCode::BAD_REQUEST
            && text.contains("unknown field")
        {
            return Err(Round::NoExactHead);
        }
        return Err(Round::Stop(Error::Other(format!(
            "{base}/v1/backup?from={from}: {status}: {text}"
        ))));
    }
    let head = r
        .headers()
        .get("x-idledger-log-head")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| Round::Stop(Error::Other(format!("{base}: no log head in the answer"))))?;
    // Read with a cap: a server sending more than was asked for is not believed.
    let mut r = r;
    let mut body = Vec::new();
    while let Some(piece) = r.chunk().await.map_err(again)? {
        body.extend_from_slice(&piece);
        if body.len() as u64 > INCREMENT_MAX_BODY {
            return Err(Round::Stop(Error::Other(format!(
                "{base}: an increment larger than {INCREMENT_MAX_BODY} bytes"
            ))));
        }
    }
    Ok((body, head))
}

fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// `backup --follow`: keeps the copy in `args.out` up with the server's log, until killed
/// (or, with `--once`, until it has reached the head).
async fn follow(args: &BackupArgs, base: &str, token: &str) -> Result<ExitCode, Error> {
    let pb = progress::bar(None, "follow");
    let summary = keep_following(args, base, token, None, |copy| {
        pb.set_position(copy.position())
    })
    .await?;
    pb.finish_and_clear();
    outln!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| Error::Other(e.to_string()))?
    )?;
    Ok(ExitCode::SUCCESS)
}

/// How long a follower that has caught up waits for a signed head over all it holds
/// before it ends anyway.
const HEAD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The follower's loop: asks for increments from the copy's position on and takes them;
/// `taken` hears the copy after each. Ends once caught up with the head, with `--once` or
/// once `stop` is set (caught up with a head read after it was set).
pub(crate) async fn keep_following(
    args: &BackupArgs,
    base: &str,
    token: &str,
    stop: Option<&std::sync::atomic::AtomicBool>,
    mut taken: impl FnMut(&crate::backup::follow::FollowCopy),
) -> Result<FollowSummary, Error> {
    use crate::backup::follow::FollowCopy;
    let base = base.trim_end_matches('/');
    // A deadline on silence, not on the whole answer: an increment of 64 MiB over a slow
    // link that keeps moving must not be cut off and asked for again forever.
    let http = http_client()?;
    let interval = std::time::Duration::from_millis(args.interval_ms);
    let retain_secs = (args.retain_days.max(0.0) * 86_400.0) as u64;
    let dir = args.out.clone();
    let mut copy = {
        let dir = dir.clone();
        let segment_records = args.segment_records;
        tokio::task::spawn_blocking(move || FollowCopy::open(&dir, segment_records))
            .await
            .map_err(|e| Error::Other(e.to_string()))?
            .map_err(refused)?
    };
    let mut added = 0u64;
    let mut failures = 0u32;
    let mut head_wait: Option<std::time::Instant> = None;
    let mut server_knows_exact_head = true;
    loop {
        // Read before asking: the last increment must be asked for after the stop, or
        // records appended between the two would be left out.
        let stopping = stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Acquire));
        let from = copy.position() + 1;
        // Caught up and about to stop, with records no head covers: this increment asks
        // for a head over exactly what the copy holds.
        let exact_head = head_wait.is_some() && server_knows_exact_head;
        let (body, head) =
            match increment(&http, base, token, from, copy.keystore_sha256(), exact_head).await {
                Ok(answer) => answer,
                Err(Round::Stop(e)) => return Err(e),
                Err(Round::NoExactHead) => {
                    server_knows_exact_head = false;
                    continue;
                }
                Err(Round::Again(why)) => {
                    failures += 1;
                    if args.once && failures > 20 {
                        return Err(Error::Other(why));
                    }
                    tracing::warn!(%why, "backup --follow: trying again");
                    let pause = interval.max(std::time::Duration::from_millis(100));
                    tokio::time::sleep(pause * failures.min(20)).await;
                    continue;
                }
            };
        failures = 0;
        let (back, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = copy.take(body.as_slice(), head, now_secs()).and_then(|n| {
                copy.prune(retain_secs, now_secs())?;
                Ok(n)
            });
            (copy, outcome)
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
        copy = back;
        // A refused increment is a server whose history does not continue the copy, or a
        // disk that failed: neither mends by asking again.
        let n = outcome.map_err(refused)?;
        taken(&copy);
        added += n;
        if copy.position() >= head {
            if args.once || stopping {
                // Caught up, and the copy's head covers all it holds: a restore of it
                // takes no record on the chain alone. Asked again (with `exact_head`)
                // for a while until it does.
                let signed = copy.signed_size().map_err(refused)?;
                let waiting = head_wait.get_or_insert_with(std::time::Instant::now);
                if signed >= copy.position() || waiting.elapsed() >= HEAD_PATIENCE {
                    if signed < copy.position() {
                        tracing::warn!(
                            signed,
                            position = copy.position(),
                            "backup --follow: no signed tree head covers the copy's last records yet"
                        );
                    }
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            tokio::time::sleep(interval).await;
        } else if n == 0 {
            // Behind, yet sent nothing: not a server to ask again at once.
            tokio::time::sleep(interval).await;
        }
    }
    Ok(FollowSummary {
        copy: dir.display().to_string(),
        position: copy.position(),
        head_hash: copy.head_hash().to_hex(),
        added,
    })
}

/// What `backup --follow --once` prints.
#[derive(serde::Serialize)]
pub(crate) struct FollowSummary {
    copy: String,
    pub(crate) position: u64,
    head_hash: String,
    added: u64,
}

/// Writes the backup; prints its manifest's summary as one JSON line.
pub async fn backup(args: &BackupArgs) -> Result<ExitCode, Error> {
    if args.follow {
        return match args.from.source()? {
            crate::audit::Source::Server { url, token } => follow(args, &url, &token).await,
            crate::audit::Source::DataDir(_) => Err(Error::Other(
                "--follow follows a server: give --server".into(),
            )),
        };
    }
    let manifest = match args.from.source()? {
        crate::audit::Source::Server { url, token } => download(&url, &token, &args.out).await?,
        crate::audit::Source::DataDir(dir) => {
            let pb = progress::bar(None, "backup");
            let out = args.out.clone();
            let bar = pb.clone();
            let m = tokio::task::spawn_blocking(move || {
                backup_data_dir(&dir, &out, |p| bar.set_position(p), |n| bar.set_length(n))
                    .map_err(refused)
            })
            .await
            .map_err(|e| Error::Other(e.to_string()))??;
            pb.finish_and_clear();
            m
        }
    };
    outln!(
        "{}",
        serde_json::json!({
            "backup": args.out.display().to_string(),
            "position": manifest.position,
            "head_hash": manifest.head_hash,
            "records": manifest.record_count,
            "chunks": manifest.chunks.len(),
            "contents_sha256": manifest.contents_sha256,
            "signed_tree_head": manifest.signed_tree_head.is_some(),
        })
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The users a backup or a live server shows deleted, once it is known to continue the
/// backup being restored: it holds the record `at` (the backup's position and head
/// hash). Another deployment's log, or an earlier backup, would say nothing of this one's
/// users; a record it cannot decode might be a deletion missed: both refused.
fn deleted_users(
    source: &str,
    at: (u64, String),
) -> Result<std::collections::BTreeSet<UserId>, Error> {
    use idledger_domain::Event;
    let mut deleted = std::collections::BTreeSet::new();
    let mut holds_backup_head = at.0 == 0;
    let mut undecodable = None;
    let mut note = |position: u64,
                    hash: Option<idledger_domain::Hash>,
                    env: Result<&idledger_domain::Envelope, String>| {
        if position == at.0 && hash.is_some_and(|h| h.to_hex() == at.1) {
            holds_backup_head = true;
        }
        match env {
            Ok(env) => {
                if let (Event::UserDeleted(_), Some(user)) = (&env.event, env.stream.user_id()) {
                    deleted.insert(user);
                }
            }
            Err(why) => {
                undecodable.get_or_insert((position, why));
            }
        }
    };
    if source.starts_with("http://") || source.starts_with("https://") {
        let token = std::env::var("IDLEDGER_TOKEN")
            .map_err(|_| Error::Other("set IDLEDGER_TOKEN to an admin or auditor token".into()))?;
        let server = crate::audit::Source::Server {
            url: source.to_owned(),
            token,
        };
        crate::audit::source::each_record(&server, 1, |p, b| {
            let hash = idledger_domain::envelope::RawRecord::parse(b)
                .ok()
                .map(|r| r.hash);
            let env = crate::audit::source::decode_at(p, b).map_err(|e| e.to_string());
            note(p, hash, env.as_ref().map_err(Clone::clone));
            std::ops::ControlFlow::Continue(())
        })?;
    } else {
        BackupSource::open(std::path::Path::new(source))
            .and_then(|mut b| {
                b.read(|checked, _| {
                    let hash = checked.links.as_ref().ok().map(|l| l.hash);
                    note(
                        checked.position,
                        hash,
                        checked.envelope.as_ref().map_err(Clone::clone),
                    );
                    Ok(())
                })
            })
            .map_err(|e| Error::Other(format!("{source}: {e}")))?;
    }
    if let Some((position, why)) = undecodable {
        return Err(Error::Other(format!(
            "--compare-with {source}: position {position} does not decode ({why}): a deletion there would go unnamed"
        )));
    }
    if !holds_backup_head {
        return Err(Error::Other(format!(
            "--compare-with {source}: it does not hold the backup's record {} (hash {}): not a later state of the same log",
            at.0, at.1
        )));
    }
    Ok(deleted)
}

/// What `idledger restore` prints.
#[derive(serde::Serialize)]
struct Restored {
    restored: String,
    position: u64,
    head_hash: String,
    records: u64,
    users: usize,
    domains: usize,
    /// Restored users that `--compare-with` shows deleted (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_since_backup: Option<Vec<UserId>>,
    /// The signed tree head checked with `--public-key` (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    signed_tree_head: Option<SignedHeadChecked>,
    /// Restored users whose password cannot be read: their data key was destroyed after
    /// the backup's records (absent when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    keys_destroyed: Vec<UserId>,
}

/// A backup's signed tree head that verified and names the restored records' root.
#[derive(serde::Serialize)]
struct SignedHeadChecked {
    tree_size: u64,
    /// Base64, as in the checkpoint and `/v1/log/sth`.
    root_hash: String,
    /// Records after the head: checked by the chain only.
    unsigned_records: u64,
}

/// Restores (the records checked and folded into the projections on the way, the store's
/// head read back), and prints the head as one JSON line; with `--compare-with`, warns
/// of users deleted since.
pub async fn restore(args: &RestoreArgs) -> Result<ExitCode, Error> {
    let log_key = args
        .public_key
        .as_deref()
        .map(super::proofs::public_key)
        .transpose()?;
    // The later log is read first: a comparison that cannot be made must fail the
    // command before anything is restored, not after.
    let deleted_later = match &args.compare_with {
        None => None,
        Some(later) => {
            let (later, from) = (later.clone(), args.from.clone());
            Some(
                tokio::task::spawn_blocking(move || {
                    // The backup's own head first (a read of it alone), to know that the
                    // other log is this one's later state.
                    let manifest = BackupSource::open(&from)
                        .and_then(|mut b| b.read(|_, _| Ok(())))
                        .map_err(refused)?
                        .manifest;
                    deleted_users(&later, (manifest.position, manifest.head_hash))
                })
                .await
                .map_err(|e| Error::Other(e.to_string()))??,
            )
        }
    };
    let pb = progress::bar(None, "restore");
    let (from, dir) = (args.from.clone(), args.data_dir.clone());
    let keys = if args.without_keys {
        KeysNeeded::NotNeeded
    } else {
        KeysNeeded::Required
    };
    let tail = if args.accept_unsigned_tail {
        UnsignedTail::Accepted
    } else {
        UnsignedTail::Refused
    };
    let bar = pb.clone();
    let restored = tokio::task::spawn_blocking(move || {
        let mut source = BackupSource::open(&from)?;
        restore_file(&mut source, &dir, log_key.as_ref(), tail, keys, |p| {
            bar.set_position(p)
        })
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
    .map_err(refused)?;
    pb.finish_and_clear();
    if args.public_key.is_none() {
        // Its hashes prove the backup whole, not that it is the log's: whoever could write
        // the file could have rewritten it.
        eprintln!(
            "warning: restored without --public-key: nothing proved this backup is the log's own (pass the key from `idledger log-key` to check its signed tree head)"
        );
    }
    if restored.unsigned_records > 0 {
        eprintln!(
            "warning: the last {} records restored are after the backup's signed tree head: nothing but their chain vouches for them",
            restored.unsigned_records
        );
    }
    let (manifest, projections) = (restored.manifest, restored.projections);
    for id in &restored.keys_destroyed {
        let upn = projections
            .users
            .get(*id)
            .map_or("", |u| u.attributes.user_principal_name.as_str());
        eprintln!(
            "warning: {upn:?} ({id}) has secrets (a password, a passkey, an authenticator) no key opens: its data key is not in the backup's key store (destroyed after the backup's records when the user was deleted later, or lost to an earlier restore without keys); rotate the user if they are to stay",
            id = id.0
        );
    }
    let signed_tree_head = restored.signed_head.map(|h| SignedHeadChecked {
        tree_size: h.tree_size,
        root_hash: {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(h.root_hash.0)
        },
        unsigned_records: manifest.position.saturating_sub(h.tree_size),
    });
    let deleted_since_backup = match deleted_later {
        None => None,
        Some(deleted) => {
            let mut named = Vec::new();
            for user in projections.users.iter_after(None) {
                if user.status != UserStatus::Deleted && deleted.contains(&user.id) {
                    eprintln!(
                        "warning: {:?} ({}) was deleted after this backup was taken, so its data key is back in {}: delete the user again to destroy it",
                        user.attributes.user_principal_name,
                        user.id,
                        args.data_dir.display()
                    );
                    named.push(user.id);
                }
            }
            Some(named)
        }
    };
    outln!(
        "{}",
        serde_json::to_string(&Restored {
            restored: args.data_dir.display().to_string(),
            position: manifest.position,
            head_hash: manifest.head_hash.clone(),
            records: manifest.record_count,
            users: projections.users.len(),
            domains: projections.domains.all().len(),
            deleted_since_backup,
            signed_tree_head,
            keys_destroyed: restored.keys_destroyed,
        })
        .map_err(|e| Error::Other(e.to_string()))?
    )?;
    Ok(ExitCode::SUCCESS)
}
