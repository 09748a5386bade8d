//! Backups and restores: a served data dir backed up, restored into a new one, and served
//! again with the same master key answers the same; a backup file that is wrong anywhere
//! (a flipped byte, a cut, a missing chunk, a wrong manifest) is refused, naming the part,
//! and nothing is written.

use crate::support::{idledger, sim, Serve};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> (bool, Value, String) {
    let out = idledger().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A restore under strace: the store's last write is synced (sled's flush alone leaves it
/// to the kernel) before the staged store is moved into place, and each directory the
/// restore created is named on the device (its parent synced).
fn restored_store_is_synced_before_it_is_in_place(backup: &Path, top: &Path) {
    let trace = top.with_extension("trace");
    let into = &top.join("nested").join("data");
    let out = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,write,pwrite64,pwritev,pwritev2",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_idledger"))
        .args(["restore", "--from", path(backup), "--data-dir", path(into)])
        .output()
        .expect("strace is needed for this test (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let db = ".restoring/store/db>";
    let synced = lines
        .iter()
        .rposition(|l| l.contains("sync(") && l.contains(db));
    let written = lines
        .iter()
        .rposition(|l| l.contains("write") && l.contains(db));
    let moved = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains(".restoring/store"));
    match (written, synced, moved) {
        (Some(w), Some(s), Some(m)) => assert!(
            w < s && s < m,
            "the store's last write (line {w}) is not synced (line {s}) before the move (line {m})"
        ),
        _ => panic!("no write, sync or move of the store seen:\n{trace}"),
    }
    for parent in [top.parent().unwrap(), top, &top.join("nested")] {
        let named = format!("<{}>)", parent.display());
        assert!(
            lines
                .iter()
                .any(|l| l.contains("fsync(") && l.contains(&named)),
            "{} not synced after the restore made a directory in it:\n{trace}",
            parent.display()
        );
    }
}

/// `backup` with one more record after its last: the last event again, under a new id,
/// chained to it, the file's sealed parts and signed head kept.
fn forged_after_its_head(backup: &Path, out: &Path) -> std::path::PathBuf {
    use idledger::backup::{read, BackupWriter};
    use idledger_domain::envelope::{encode_record, ProposedEvent, RecordFields};
    let mut records = Vec::new();
    let mut last = None;
    let contents = read(std::fs::File::open(backup).unwrap(), |checked, bytes| {
        records.push((checked.position, bytes.to_vec()));
        last = checked.envelope.clone().ok();
        Ok(())
    })
    .unwrap();
    let last = last.unwrap();
    let mut w = BackupWriter::new(std::fs::File::create(out).unwrap()).unwrap();
    for (position, bytes) in &records {
        w.push(*position, bytes).unwrap();
    }
    let proposed = ProposedEvent::new(uuid::Uuid::now_v7(), last.actor.clone(), last.event);
    let (bytes, _) = encode_record(
        RecordFields {
            position: last.position + 1,
            stream: &last.stream,
            version: last.version + 1,
            recorded_at: last.recorded_at,
            proposed: &proposed,
        },
        &last.hash,
    )
    .unwrap();
    w.push(last.position + 1, &bytes).unwrap();
    w.finish(&contents.sealed, None, contents.manifest.signed_tree_head)
        .unwrap();
    out.to_path_buf()
}

/// `backup` rewritten without its log key (the file's hashes are unkeyed: anyone who can
/// write it can take a part out).
/// `backup` written again without its log key, and with `everything`, without its key
/// store and signed head too: all that shows the log was served.
fn without_log_key(backup: &Path, out: &Path, everything: bool) -> std::path::PathBuf {
    use idledger::backup::{read, BackupWriter};
    let mut records = Vec::new();
    let contents = read(std::fs::File::open(backup).unwrap(), |checked, bytes| {
        records.push((checked.position, bytes.to_vec()));
        Ok(())
    })
    .unwrap();
    let mut w = BackupWriter::new(std::fs::File::create(out).unwrap()).unwrap();
    for (position, bytes) in &records {
        w.push(*position, bytes).unwrap();
    }
    let mut sealed = contents.sealed.clone();
    sealed.log_key = None;
    let mut head = contents.manifest.signed_tree_head;
    if everything {
        sealed.keystore = None;
        head = None;
    }
    w.finish(&sealed, None, head).unwrap();
    out.to_path_buf()
}

/// `idledger restore --from FROM --data-dir INTO`, then `more` flags.
pub(crate) fn restore(from: &Path, into: &Path, more: &[&str]) -> (bool, Value, String) {
    let mut args = vec!["restore", "--from", path(from), "--data-dir", path(into)];
    args.extend_from_slice(more);
    run(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_data_dir_answers_as_the_original_did() {
    let dir = tempfile::tempdir().unwrap();
    let (data, restored) = (dir.path().join("data"), dir.path().join("restored"));
    std::fs::create_dir_all(&data).unwrap();
    let sim = sim().await;
    let mut serve = Serve::start(&data, None).await;
    let user = crate::crash::user_with_key(&serve, &sim, &crate::support::ext(3)).await;
    // A rotation, so a sealed password is in the log.
    rotated(&serve, &user).await;
    // Its password as an admin sees it: a plaintext no backup may carry.
    let revealed = serve
        .call(
            Method::POST,
            &format!("/v1/users/{user}/password/reveal"),
            Some(json!({"reason": "backup test"})),
        )
        .await["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(revealed.len() >= 12, "{revealed}");
    // Online, while one client keeps appending and another keeps changing a user (their
    // key), so the users' pages at the backup's position are not the pages of later: the
    // backup runs to the head when it was asked for, and restores to exactly that record.
    let listed = serve.call(Method::GET, "/v1/users?limit=1000", None).await;
    let rekeyed = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .find(|id| *id != user)
        .unwrap();
    let mut writing = keep_writing(&serve, 1);
    writing.push(keep_rekeying(&serve, &rekeyed));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let online = dir.path().join("online.backup");
    let (ok, taken, err) = run_with_token(
        &serve.token,
        &["backup", "--server", &serve.url, "--out", path(&online)],
    )
    .await;
    assert!(ok, "{err}");
    let position = taken["position"].as_u64().unwrap();
    assert_eq!(
        live_hash(&serve, position).await,
        taken["head_hash"],
        "{taken}"
    );
    // Neither the online backup's file nor `GET /v1/backup` carries the master key (in any
    // form it is kept in) or a secret in clear: the revealed password, the domain's client
    // secret as the admin gave it.
    let secrets = secrets_of(&data, &revealed);
    let answer = serve.get("/v1/backup").await;
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let answer = answer.bytes().await.unwrap().to_vec();
    assert!(answer.len() > 1000, "{} bytes", answer.len());
    for (what, bytes) in [
        ("the online backup", std::fs::read(&online).unwrap()),
        ("GET /v1/backup", answer),
    ] {
        carries_none(what, &bytes, &secrets);
    }
    let back = dir.path().join("online-restored");
    let (ok, done, err) = restore(&online, &back, &[]);
    assert!(ok, "{err}");
    restored_store_is_synced_before_it_is_in_place(&online, &dir.path().join("traced"));
    // Unproved: said so.
    assert!(
        err.contains("warning: restored without --public-key"),
        "{err}"
    );
    assert_eq!(done["head_hash"], taken["head_hash"]);
    assert!(done.get("signed_tree_head").is_none(), "{done}");
    // With the log's public key (taken from the server, not from the backup) the backup's
    // signed head must verify and name the root of the records restored.
    let key = serve.get("/v1/log/public-key").await.text().await.unwrap();
    let checked = dir.path().join("online-checked");
    let (ok, done, err) = restore(&online, &checked, &["--public-key", key.trim()]);
    assert!(ok, "{err}");
    assert!(!err.contains("without --public-key"), "{err}");
    let head = &done["signed_tree_head"];
    let size = head["tree_size"].as_u64().unwrap();
    // The server signed a head over exactly what the backup holds: nothing in it is
    // left unproven.
    assert_eq!(size, position, "{done}");
    assert_eq!(head["unsigned_records"], 0, "{done}");
    // The restored log keeps that head, and its records give its root.
    let (verified, code) = crate::support::verify(&checked);
    assert_eq!(code, 0, "{verified}");
    // Another key of the same name: refused, and nothing is left behind.
    let name = idledger_replay::tree::LogPublicKey::parse(&key).unwrap();
    let impostor = idledger_replay::tree::LogSigningKey::from_seed(name.name(), &[9; 32]).unwrap();
    let refused_dir = dir.path().join("refused");
    let (ok, _, err) = restore(
        &online,
        &refused_dir,
        &["--public-key", &impostor.public().to_string()],
    );
    assert!(!ok && err.contains("signed tree head"), "{err}");
    assert!(!refused_dir.exists(), "a refused restore left files behind");
    // A record appended to the genuine backup, chained and rehashed as anyone who can
    // write the file can: the key proves nothing of it, so it is refused unless asked.
    let forged = forged_after_its_head(&online, &dir.path().join("forged.backup"));
    let refused_dir = dir.path().join("forged-refused");
    let (ok, _, err) = restore(&forged, &refused_dir, &["--public-key", key.trim()]);
    assert!(!ok && err.contains("not proven by the key"), "{err}");
    assert!(!refused_dir.exists(), "a refused restore left files behind");
    // Without `--public-key` too: the backup's own key (one `serve` will open, or refuse
    // to start) proves nothing of it either, and `serve` would sign it as history.
    let (ok, _, err) = restore(&forged, &refused_dir, &[]);
    assert!(!ok && err.contains("not proven by the key"), "{err}");
    assert!(!refused_dir.exists(), "a refused restore left files behind");
    let (ok, _, err) = restore(
        &forged,
        &dir.path().join("forged-accepted-unkeyed"),
        &["--accept-unsigned-tail"],
    );
    assert!(ok, "{err}");
    assert!(err.contains("the last 1 records restored"), "{err}");
    // Nor with the log key taken out of it: `serve` would make a new one and sign it all.
    let keyless = without_log_key(&forged, &dir.path().join("keyless.backup"), false);
    let (ok, _, err) = restore(&keyless, &refused_dir, &[]);
    assert!(!ok && err.contains("not proven by the key"), "{err}");
    assert!(!refused_dir.exists(), "a refused restore left files behind");
    // Nor with the key store and the head taken out as well, so nothing shows it was
    // served (its secrets then open with no key: restored only without them).
    let bare = without_log_key(&forged, &dir.path().join("bare.backup"), true);
    let (ok, _, err) = restore(&bare, &refused_dir, &["--without-keys"]);
    assert!(!ok && err.contains("not proven by the key"), "{err}");
    assert!(!refused_dir.exists(), "a refused restore left files behind");
    let (ok, done, err) = restore(
        &forged,
        &dir.path().join("forged-accepted"),
        &["--public-key", key.trim(), "--accept-unsigned-tail"],
    );
    assert!(ok, "{err}");
    assert_eq!(done["signed_tree_head"]["unsigned_records"], 1, "{done}");

    // The backup taken during the load, restored and served with the same master key (and
    // the admin's token, which lives in the log), answers as the original did at the
    // backup's position, while the original goes on taking writes: the same users' pages,
    // every event, the same export files, the same password, the same signed head.
    std::fs::copy(data.join("master.key"), checked.join("master.key")).unwrap();
    std::fs::copy(data.join("admin.token"), checked.join("admin.token")).unwrap();
    let mut copy = Serve::start(&checked, None).await;
    // The tree's leaves came with the restore: the head signed over them has the root
    // `verify` computes from the records.
    let sth = copy
        .call(Method::GET, "/v1/log/sth?format=json", None)
        .await;
    assert_eq!(sth["tree_size"], verified["tree_size"], "{sth}");
    assert_eq!(sth["root_hash"], verified["tree_root"], "{sth}");
    let health = serve.call(Method::GET, "/healthz", None).await;
    assert!(
        health["head_position"].as_u64().unwrap() > position,
        "the original took no writes after the backup: {health}"
    );
    let (users, pages) = users_at(&serve, position).await;
    assert!(pages >= 3 && users.len() > 10, "{pages} pages");
    assert_eq!(users, users_at(&copy, position).await.0, "the users differ");
    let was = |items: &[Value]| {
        items.iter().find(|u| u["id"] == rekeyed.as_str()).unwrap()["key_id"].clone()
    };
    let now = serve
        .call(Method::GET, &format!("/v1/users/{rekeyed}"), None)
        .await;
    assert_ne!(
        was(&users),
        now["key_id"],
        "the pages compared are the original's of now, not at the backup's position"
    );
    let events = events_to(&serve, position).await;
    assert_eq!(events.len() as u64, position);
    let copied = events_to(&copy, position).await;
    assert_eq!(copied.len(), events.len());
    if let Some(n) = (0..events.len()).find(|&n| events[n] != copied[n]) {
        panic!("event {} differs: {} {}", n + 1, events[n], copied[n]);
    }
    for (kind, format) in [
        ("password-changes", "csv"),
        ("events", "jsonl"),
        ("users", "csv"),
    ] {
        let path = format!("/v1/audit/exports/{kind}?format={format}&at_position={position}");
        let mut files = Vec::new();
        for s in [&serve, &copy] {
            let r = s.get(&path).await;
            assert_eq!(r.status(), reqwest::StatusCode::OK, "{kind}");
            files.push(r.bytes().await.unwrap());
        }
        assert!(files[0].len() > 100, "{kind}: {} bytes", files[0].len());
        assert!(files[0] == files[1], "{kind}: the exports differ");
    }
    let again = copy
        .call(
            Method::POST,
            &format!("/v1/users/{user}/password/reveal"),
            Some(json!({"reason": "backup test"})),
        )
        .await;
    assert_eq!(again["password"], revealed.as_str(), "reveal differs");
    // The head the backup carried is the restored log's own, timestamp and all.
    let head = format!("/v1/log/sth/{position}?format=json");
    assert_eq!(
        serve.call(Method::GET, &head, None).await,
        copy.call(Method::GET, &head, None).await,
        "the signed head differs"
    );
    copy.stop();
    crate::support::wait_released(&checked).await;
    for w in writing {
        w.abort();
    }
    serve.stop();
    crate::support::wait_released(&data).await;

    let file = dir.path().join("idledger.backup");
    let (ok, made, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&file)]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&file).unwrap();
    carries_none("the offline backup", &bytes, &secrets);
    // A second backup into the same file is refused: nothing is overwritten.
    let (ok, _, _) = run(&["backup", "--data-dir", path(&data), "--out", path(&file)]);
    assert!(!ok);
    // A backup is written under `<name>.partial` and named only when whole: one a killed
    // backup left is taken over, one another backup is writing is refused.
    let second = dir.path().join("second.backup");
    let partial = dir.path().join("second.backup.partial");
    std::fs::write(&partial, b"left by a killed backup").unwrap();
    let writing = std::fs::File::open(&partial).unwrap();
    writing.try_lock().unwrap();
    let (ok, _, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&second)]);
    assert!(
        !ok && err.contains("being written by another backup"),
        "{err}"
    );
    assert!(!second.exists());
    drop(writing);
    let (ok, again, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&second)]);
    assert!(ok, "{err}");
    assert_eq!(again["head_hash"], made["head_hash"]);
    assert!(!partial.exists());
    assert_eq!(std::fs::read(&second).unwrap(), bytes);

    let (ok, done, err) = restore(&file, &restored, &[]);
    assert!(ok, "{err}");
    assert_eq!(done["head_hash"], made["head_hash"], "{done} {made}");
    assert_eq!(done["position"], made["position"]);
    assert!(done["users"].as_u64().unwrap() > 0, "{done}");
    // A stopped server signed a head over its whole log: a backup of its data dir is
    // covered to the last record (the key given as a file this time).
    let key_file = dir.path().join("log.pub");
    std::fs::write(&key_file, &key).unwrap();
    let (ok, signed, err) = restore(
        &file,
        &dir.path().join("restored-checked"),
        &["--public-key", path(&key_file)],
    );
    assert!(ok, "{err}");
    assert_eq!(signed["signed_tree_head"]["tree_size"], made["position"]);
    assert_eq!(signed["signed_tree_head"]["unsigned_records"], 0);
    // Into a data dir that holds something: refused.
    let (ok, _, err) = restore(&file, &data, &[]);
    assert!(!ok && err.contains("not empty"), "{err}");
    let (verified, code) = crate::support::verify(&restored);
    assert_eq!(code, 0, "{verified}");
    assert_eq!(verified["head_hash"], made["head_hash"]);
    // The same export files from the original and the restored dir.
    for (kind, format) in [
        ("password-changes", "csv"),
        ("events", "jsonl"),
        ("users", "csv"),
    ] {
        let files: Vec<Vec<u8>> = [&data, &restored]
            .iter()
            .enumerate()
            .map(|(n, d)| {
                let out = dir.path().join(format!("{kind}-{n}.{format}"));
                let (ok, _, err) = run(&[
                    "export",
                    "--data-dir",
                    path(d),
                    "--kind",
                    kind,
                    "--format",
                    format,
                    "--out",
                    path(&out),
                ]);
                assert!(ok, "{kind}: {err}");
                std::fs::read(&out).unwrap()
            })
            .collect();
        assert!(files[0].len() > 100, "{kind}: {} bytes", files[0].len());
        assert!(files[0] == files[1], "{kind}: the exports differ");
    }
}

/// Rotates `user`'s password and waits until the rotation succeeded.
pub(crate) async fn rotated(serve: &Serve, user: &str) {
    serve
        .call(Method::POST, &format!("/v1/users/{user}/rotate"), None)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = serve
            .call(
                Method::GET,
                &format!("/v1/users/{user}/password-history"),
                None,
            )
            .await;
        if h["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "succeeded")
        {
            return;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What no backup may carry, each named: the master key of `data` as its file holds it
/// (base64), its bytes, and their hex; `revealed`, a password in clear; the client secret
/// the domain was made with (`crash::contoso_domain`'s).
fn secrets_of(data: &Path, revealed: &str) -> Vec<(&'static str, Vec<u8>)> {
    use base64::Engine;
    let stored = std::fs::read_to_string(data.join("master.key")).unwrap();
    let stored = stored.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .unwrap();
    assert_eq!(raw.len(), 32);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("the master key's file text", stored.as_bytes().to_vec()),
        ("the master key's bytes", raw),
        ("the master key in hex", hex.into_bytes()),
        ("the revealed password", revealed.as_bytes().to_vec()),
        (
            "the client secret",
            crate::support::SECRET.as_bytes().to_vec(),
        ),
    ]
}

/// Fails naming the secret `what` carries, if it carries any.
fn carries_none(what: &str, bytes: &[u8], secrets: &[(&str, Vec<u8>)]) {
    for (name, secret) in secrets {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "{what} carries {name}"
        );
    }
}

/// Every user (deleted ones too) as `serve` answers at `position`, paged 7 at a time
/// through `next`; and how many pages that took.
async fn users_at(serve: &Serve, position: u64) -> (Vec<Value>, usize) {
    let mut users = Vec::new();
    let mut after = String::new();
    for pages in 1.. {
        let page = serve
            .call(
                Method::GET,
                &format!("/v1/users?include_deleted=true&at_position={position}&limit=7{after}"),
                None,
            )
            .await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7, "{page}");
        users.extend(items.iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return (users, pages),
        }
    }
    unreachable!()
}

/// Every event of `serve`'s log from the first to `position`, paged.
async fn events_to(serve: &Serve, position: u64) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    while (events.len() as u64) < position {
        let page = serve
            .call(
                Method::GET,
                &format!("/v1/events?from_position={}&limit=500", events.len() + 1),
                None,
            )
            .await;
        let items = page["items"].as_array().unwrap();
        assert!(!items.is_empty(), "the log ends before {position}");
        events.extend(items.iter().cloned());
    }
    events.truncate(position as usize);
    events
}

/// The sections of a backup file: (tag, offset of the section, its length).
fn sections(bytes: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut at = idledger::backup::MAGIC.len();
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at + 1..at + 9].try_into().unwrap()) as usize;
        out.push((bytes[at], at, 9 + len));
        at += 9 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_backup_is_refused_naming_the_part_and_nothing_is_written() {
    // 25,000 events: three chunks.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::support::filled_data_dir(&data, 25).await;
    let good = dir.path().join("good.backup");
    let (ok, made, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&good)]);
    assert!(ok, "{err}");
    assert_eq!(made["records"], 25_000);
    assert_eq!(made["chunks"], 3);
    let bytes = std::fs::read(&good).unwrap();
    let parts = sections(&bytes);
    assert_eq!(
        parts.iter().map(|p| p.0).collect::<Vec<_>>(),
        [b'C', b'C', b'C', b'M'],
        "no key store in a dir that was never served"
    );

    let flipped = {
        let mut b = bytes.clone();
        let (_, at, len) = parts[1];
        b[at + len / 2] ^= 0x20;
        b
    };
    let cut = bytes[..bytes.len() * 2 / 3].to_vec();
    let missing = {
        let (_, at, len) = parts[1];
        [&bytes[..at], &bytes[at + len..]].concat()
    };
    let wrong_manifest = {
        let (_, at, len) = parts[3];
        let manifest = String::from_utf8(bytes[at + 9..at + len].to_vec()).unwrap();
        let head = made["head_hash"].as_str().unwrap();
        let other = format!(
            "{}{}",
            if head.starts_with('0') { "1" } else { "0" },
            &head[1..]
        );
        [&bytes[..at + 9], manifest.replace(head, &other).as_bytes()].concat()
    };
    // A chunk claiming more room than any chunk the writer makes (65 MiB), though less than
    // a key store may take: refused before anything is read into memory.
    let huge = {
        let mut b = bytes.clone();
        let (_, at, _) = parts[0];
        b[at + 1..at + 9].copy_from_slice(&(100u64 << 20).to_le_bytes());
        b
    };
    for (name, file, says) in [
        ("huge", huge, "not believable"),
        ("flipped", flipped, "chunk 2"),
        ("cut", cut, "truncated"),
        ("missing", missing, "chunk 2 (positions 10001–20000)"),
        ("manifest", wrong_manifest, "manifest"),
    ] {
        let f = dir.path().join(format!("{name}.backup"));
        std::fs::write(&f, &file).unwrap();
        let target = dir.path().join(format!("restore-{name}"));
        let (ok, _, err) = restore(&f, &target, &[]);
        assert!(!ok, "{name}: restored");
        assert!(err.contains(says), "{name}: {err}");
        assert!(!target.exists(), "{name}: something was written");
    }
    // The good file restores, once told to take records no signed head proves (this dir
    // was never served, so it has no log key: nothing tells it from a forgery).
    let target = dir.path().join("restore-good");
    let (ok, _, err) = restore(&good, &target, &[]);
    assert!(!ok && err.contains("not proven by the key"), "{err}");
    assert!(!target.exists(), "something was written");
    let (ok, done, err) = restore(&good, &target, &["--accept-unsigned-tail"]);
    assert!(ok, "{err}");
    assert_eq!(done["head_hash"], made["head_hash"]);
    assert!(!target.join(".restoring").exists());

    // A restore cut off while it moved its files into place leaves its staging directory:
    // such a data dir is never opened, whatever of it is in place.
    std::fs::create_dir(target.join(".restoring")).unwrap();
    let refused = idledger::store::SledEventLog::open(&target).map(|_| ());
    let err = refused.expect_err("an interrupted restore was opened");
    assert!(err.to_string().contains("interrupted restore"), "{err}");
    // Nor read by the auditors' tools, which would report a half-moved dir as fine.
    let (ok, report, _) = run(&["verify", "--data-dir", path(&target)]);
    let reason = report["error"].as_str().unwrap_or_default();
    assert!(!ok && reason.contains("interrupted restore"), "{report}");
    assert_eq!(report["checked"], false, "{report}");
}

/// Runs `idledger` with the server's token, without blocking the test's runtime.
pub(crate) async fn run_with_token(token: &str, args: &[&str]) -> (bool, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_idledger"))
        .args(args)
        .env("IDLEDGER_TOKEN", token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `clients` clients that keep posting to `path` the body `body(client, n)` makes, until
/// aborted.
fn keep_posting(
    serve: &Serve,
    clients: usize,
    path: &'static str,
    body: fn(usize, u64) -> Value,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (url, token) = (serve.url.clone(), serve.token.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for n in 0.. {
                    let r = http
                        .post(format!("{url}{path}"))
                        .bearer_auth(&token)
                        .json(&body(c, n))
                        .send()
                        .await;
                    if r.is_err() {
                        break;
                    }
                }
            })
        })
        .collect()
}

/// Clients that keep appending (each new token is an event) until aborted.
fn keep_writing(serve: &Serve, clients: usize) -> Vec<tokio::task::JoinHandle<()>> {
    keep_posting(
        serve,
        clients,
        "/v1/tokens",
        |c, n| json!({"role": "auditor", "name": format!("load {c}/{n}")}),
    )
}

/// A client that keeps giving `user` a new key (each assignment an event on their stream,
/// shown in their view) until aborted.
fn keep_rekeying(serve: &Serve, user: &str) -> tokio::task::JoinHandle<()> {
    let (url, token, user) = (serve.url.clone(), serve.token.clone(), user.to_owned());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        for n in 0.. {
            let r = http
                .put(format!("{url}/v1/users/{user}/key"))
                .bearer_auth(&token)
                .json(&json!({"key_id": format!("LOAD-{n}")}))
                .send()
                .await;
            if r.is_err() {
                break;
            }
        }
    })
}

/// The hash the server's log holds at `position`.
async fn live_hash(serve: &Serve, position: u64) -> Value {
    let live = serve
        .call(
            Method::GET,
            &format!("/v1/events?from_position={position}&limit=1"),
            None,
        )
        .await;
    live["items"][0]["hash"].clone()
}

/// A temporary directory with a served data dir (`data`) and the path of a copy beside it
/// (`copy`, not yet made).
async fn served_with_copy() -> (tempfile::TempDir, std::path::PathBuf, Serve) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let serve = Serve::start(&data, None).await;
    let copy = dir.path().join("copy");
    (dir, copy, serve)
}

/// An offline backup holds the data dir's last signed head to the records it writes: a
/// head that is not of them (heads and key copied in from another log) gives no backup,
/// rather than one that restore refuses later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_backup_whose_head_is_not_of_its_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for (data, name) in [(&a, "a"), (&b, "b")] {
        std::fs::create_dir_all(data).unwrap();
        let mut serve = Serve::start(data, None).await;
        serve.grow(30, name).await;
        serve.get("/v1/log/sth").await;
        serve.stop();
    }
    // b's own head: its backup carries it.
    let good = dir.path().join("b.backup");
    let (ok, _, err) = run(&["backup", "--data-dir", path(&b), "--out", path(&good)]);
    assert!(ok, "{err}");
    for file in ["heads", "log-key"] {
        std::fs::copy(a.join("tree").join(file), b.join("tree").join(file)).unwrap();
    }
    let out = dir.path().join("mixed.backup");
    let (ok, _, err) = run(&["backup", "--data-dir", path(&b), "--out", path(&out)]);
    assert!(!ok, "a backup carrying another log's head");
    assert!(!out.exists(), "a refused backup left its file");
    assert!(
        err.contains("has another root than these records give"),
        "{err}"
    );
}

/// However long the server waits between heads, `--follow --once` ends with a head over
/// everything its copy holds (it asks for one), so the copy restores as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_made_once_ends_with_a_head_over_all_it_holds_whatever_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let slow = [("IDLEDGER_STH_INTERVAL_MS", "3600000")];
    let serve = Serve::start_with(&data, None, &slow).await;
    serve.grow(40, "early").await;
    // A head now, so the next records come after one younger than the interval.
    serve.get("/v1/log/sth").await;
    serve.grow(80, "late").await;
    let copy = dir.path().join("copy");
    let started = std::time::Instant::now();
    let (ok, summary, err) = run_with_token(
        &serve.token,
        &[
            "backup",
            "--server",
            &serve.url,
            "--out",
            path(&copy),
            "--follow",
            "--once",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited for a head"
    );
    let note = std::fs::read_to_string(copy.join("signed-tree-head")).unwrap();
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(size, summary["position"].as_u64().unwrap(), "{note}");
    // And the server keeps that head.
    assert_eq!(
        serve.get(&format!("/v1/log/sth/{size}")).await.status(),
        reqwest::StatusCode::OK
    );
    let (ok, _, err) = restore(&copy, &dir.path().join("restored"), &[]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_copy_killed_again_and_again_resumes_without_gaps_and_restores() {
    use rand::Rng;
    let (dir, copy, mut serve) = served_with_copy().await;
    let writers = keep_writing(&serve, 3);
    let follow = [
        "backup",
        "--server",
        &serve.url,
        "--out",
        path(&copy),
        "--follow",
        "--interval-ms",
        "20",
        // Small segments, so that kills land while segments are sealed too.
        "--segment-records",
        "300",
    ];
    let mut rng = rand::thread_rng();
    for _ in 0..15 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idledger"))
            .args(follow)
            .env("IDLEDGER_TOKEN", &serve.token)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
    }
    // A second follower of the same copy is refused while one runs.
    let mut running = tokio::process::Command::new(env!("CARGO_BIN_EXE_idledger"))
        .args(follow)
        .env("IDLEDGER_TOKEN", &serve.token)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, _, err) = run_with_token(&serve.token, &[&follow[..], &["--once"]].concat()).await;
    assert!(!ok && err.contains("another"), "{err}");
    running.start_kill().unwrap();
    running.wait().await.unwrap();

    // Enough records for several sealed segments, however slow this machine is today.
    for _ in 0..600 {
        let health = serve.call(Method::GET, "/healthz", None).await;
        if health["head_position"].as_u64().unwrap_or(0) > 1200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in writers {
        w.abort();
    }
    let (ok, caught_up, err) =
        run_with_token(&serve.token, &[&follow[..], &["--once"]].concat()).await;
    assert!(ok, "{err}");
    let position = caught_up["position"].as_u64().unwrap();
    assert!(position > 1000, "{caught_up}");
    assert_eq!(live_hash(&serve, position).await, caught_up["head_hash"]);
    // The copy keeps the latest head the server signed over records it holds.
    let note = std::fs::read_to_string(copy.join("signed-tree-head")).unwrap();
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    assert!(size > 0 && size <= position, "{note}");
    let public_key = serve.get("/v1/log/public-key").await.text().await.unwrap();
    idledger_replay::tree::LogPublicKey::parse(&public_key)
        .unwrap()
        .open(&note)
        .expect("the copy's head is signed by the log's key");
    // Sealed segments follow each other with no gap, and each was sealed once it held the
    // 300 records asked for (a catch-up increment may bring many more at once).
    let mut sealed: Vec<(u64, u64)> = std::fs::read_dir(copy.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("open-"))
        .map(|name| {
            let (first, last) = name
                .trim_end_matches(".backup")
                .split_once('-')
                .unwrap_or_else(|| panic!("a segment named {name}"));
            (first.parse().unwrap(), last.parse().unwrap())
        })
        .collect();
    sealed.sort();
    assert!(sealed.len() >= 2, "{sealed:?}");
    assert_eq!(sealed[0].0, 1, "{sealed:?}");
    assert!(
        sealed.windows(2).all(|p| p[1].0 == p[0].1 + 1),
        "{sealed:?}"
    );
    assert!(
        sealed.iter().all(|(first, last)| last - first + 1 >= 300),
        "{sealed:?}"
    );

    // Restored from the copy: the same history; then the original dir and the restored
    // one verify to the same head.
    // Each increment carries a head over exactly what it brings: nothing in the copy is
    // left to its chain alone, and it restores without being told to take a tail.
    assert_eq!(size, position, "{note}");
    let restored = dir.path().join("restored");
    let (ok, done, err) = restore(&copy, &restored, &[]);
    assert!(ok, "{err}");
    assert!(
        !err.contains("after the backup's signed tree head"),
        "{err}"
    );
    assert_eq!(done["head_hash"], caught_up["head_hash"], "{done}");
    let (verified, code) = crate::support::verify(&restored);
    assert_eq!(code, 0, "{verified}");

    // Hostile or wrong asks for an increment: a clear 400 each, and nothing changes (a
    // whole backup signs and keeps a head; a refused one must not, though the log grew).
    serve
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "auditor", "name": "grows the log"})),
        )
        .await;
    let heads = || async {
        serve
            .call(Method::GET, "/v1/log/sths?limit=1000", None)
            .await["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    // The notary's own tick signs the grown log within its interval: wait for that head,
    // then nothing grows the log any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let kept = heads().await;
        let covered = kept
            .last()
            .and_then(|h| h["tree_size"].as_u64())
            .unwrap_or(0);
        let head = serve.call(Method::GET, "/healthz", None).await["head_position"]
            .as_u64()
            .unwrap();
        if covered >= head {
            break kept.len();
        }
        assert!(Instant::now() < deadline, "no head covers {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for query in [
        "from=0",
        &format!("from={}", position + 10_000_000),
        "limit=0",
        "max_bytes=0",
        "keystore_sha256=zz",
        "from=1&extra=1",
        "from=x",
    ] {
        let r = serve.get(&format!("/v1/backup?{query}")).await;
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST, "{query}");
    }
    assert_eq!(
        heads().await.len(),
        kept,
        "no head signed for a refused backup"
    );

    // An increment bounded by bytes holds at least one record, and says where the log is.
    let r = serve.get("/v1/backup?from=2&max_bytes=1").await;
    let head: u64 = r.headers()["x-idledger-log-head"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(head >= position);
    let bytes = r.bytes().await.unwrap();
    let mut verifier = idledger_replay::Verifier::after(1, {
        let first = serve.call(Method::GET, "/v1/events?limit=1", None).await;
        idledger_domain::Hash::from_hex(first["items"][0]["hash"].as_str().unwrap()).unwrap()
    });
    let one = idledger::backup::read_with(&bytes[..], &mut verifier, |_, _| Ok(())).unwrap();
    assert_eq!((one.manifest.from, one.manifest.position), (2, 2));

    // A whole backup bounded by `limit` carries a signed head over exactly what it holds,
    // and restores.
    let bounded = serve.get("/v1/backup?limit=3").await.bytes().await.unwrap();
    let contents = idledger::backup::read(&bounded[..], |_, _| Ok(())).unwrap();
    assert_eq!(contents.manifest.position, 3);
    let note = contents.manifest.signed_tree_head.unwrap();
    assert_eq!(note.lines().nth(1), Some("3"), "{note}");
    let file = dir.path().join("bounded.backup");
    std::fs::write(&file, &bounded).unwrap();
    let (ok, out, err) = restore(&file, &dir.path().join("bounded"), &[]);
    assert!(ok, "{out} {err}");

    // Another server's history does not continue the copy: the follower stops, and the
    // copy keeps what it had.
    let other_data = dir.path().join("other");
    std::fs::create_dir_all(&other_data).unwrap();
    let mut other = Serve::start(&other_data, None).await;
    other.grow(50, "other").await;
    let (ok, _, err) = run_with_token(
        &other.token,
        &[
            "backup",
            "--server",
            &other.url,
            "--out",
            path(&copy),
            "--follow",
            "--once",
        ],
    )
    .await;
    assert!(!ok, "a copy followed another server's log");
    assert!(err.contains("400") || err.contains("chain"), "{err}");
    let (ok, again, err) = run_with_token(&serve.token, &[&follow[..], &["--once"]].concat()).await;
    assert!(ok, "{err}");
    // Unharmed by the refused follow: it goes on with this server's log.
    let now = again["position"].as_u64().unwrap();
    assert!(now >= position, "{again}");
    assert_eq!(again["head_hash"], live_hash(&serve, now).await, "{again}");
    other.stop();
    serve.stop();
}

/// `restore --compare-with later` of `backup` into `target`, with `token`.
async fn restore_compared(
    token: &str,
    backup: &Path,
    target: &Path,
    later: &str,
) -> (bool, Value, String) {
    let args = [
        "restore",
        "--from",
        path(backup),
        "--data-dir",
        path(target),
        "--compare-with",
        later,
    ];
    run_with_token(token, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_names_users_deleted_after_the_backup_was_taken() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sim = sim().await;
    let mut serve = Serve::start(&data, None).await;
    let external = crate::support::ext(3);
    let user = crate::crash::user_with_key(&serve, &sim, &external).await;
    // A password sealed under the user's data key, so the user has one to shred.
    rotated(&serve, &user).await;
    let domain = serve
        .call(Method::GET, &format!("/v1/users/{user}"), None)
        .await["domain_id"]
        .as_str()
        .unwrap()
        .to_owned();
    serve
        .call(
            Method::PATCH,
            &format!("/v1/domains/{domain}"),
            Some(json!({"removal_behavior": "delete"})),
        )
        .await;
    // An auditor may take the backup; an agent may not.
    let auditor = serve
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "auditor", "name": "a"})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = serve
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "agent", "name": "k", "key_ids": ["K-0003"]})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = dir.path().join("before.backup");
    let (ok, _, err) = run_with_token(
        &agent,
        &["backup", "--server", &serve.url, "--out", path(&before)],
    )
    .await;
    assert!(!ok && err.contains("403"), "{err}");
    assert!(!before.exists());
    let (ok, _, err) = run_with_token(
        &auditor,
        &["backup", "--server", &serve.url, "--out", path(&before)],
    )
    .await;
    assert!(ok, "{err}");

    // The user leaves the sync group; the domain deletes such users.
    let r = reqwest::Client::new()
        .delete(format!(
            "{sim}/_sim/groups/{}/members/{external}",
            crate::support::SYNC
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    serve
        .call(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = serve.get(&format!("/v1/users/{user}")).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::NOT_FOUND || body["status"] == "deleted" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the user was not deleted: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let after = dir.path().join("after.backup");
    let (ok, _, err) = run_with_token(
        &auditor,
        &["backup", "--server", &serve.url, "--out", path(&after)],
    )
    .await;
    assert!(ok, "{err}");

    // Against the live server, and against the later backup: the same warning.
    for (n, later) in [serve.url.clone(), path(&after).to_owned()]
        .iter()
        .enumerate()
    {
        let target = dir.path().join(format!("restored-{n}"));
        let (ok, done, err) = restore_compared(&auditor, &before, &target, later).await;
        assert!(ok, "{err}");
        assert_eq!(
            done["deleted_since_backup"],
            json!([user]),
            "{later}: {done}"
        );
        assert!(
            err.contains("was deleted after this backup was taken") && err.contains(&user),
            "{later}: {err}"
        );
    }
    // A comparison that cannot be made fails the command before anything is restored.
    let target = dir.path().join("restored-unreachable");
    let (ok, _, err) = restore_compared(&auditor, &before, &target, "http://127.0.0.1:9").await;
    assert!(!ok, "{err}");
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
        "restored although the comparison failed"
    );
    // Another deployment's log says nothing of these users: refused, nothing restored.
    let other_data = dir.path().join("other");
    std::fs::create_dir_all(&other_data).unwrap();
    let mut other = Serve::start(&other_data, None).await;
    other.grow(50, "elsewhere").await;
    let target = dir.path().join("restored-other");
    let (ok, _, err) = restore_compared(&other.token, &before, &target, &other.url).await;
    assert!(!ok, "compared with another log");
    assert!(err.contains("not a later state of the same log"), "{err}");
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
        "restored although the comparison failed"
    );
    other.stop();
    // Without a later source, nothing is said.
    let target = dir.path().join("restored-plain");
    let (ok, done, err) = restore(&before, &target, &[]);
    assert!(ok, "{err}");
    assert!(done.get("deleted_since_backup").is_none(), "{done}");
    assert!(done.get("keys_destroyed").is_none(), "{done}");
    // A whole backup bounded to the same records, taken now: its key store no longer
    // holds the user's key. Restored, the user is back with a password no key opens, and
    // the restore says so.
    let position = done["position"].as_u64().unwrap();
    let bounded = serve
        .get(&format!("/v1/backup?limit={position}"))
        .await
        .bytes()
        .await
        .unwrap();
    let file = dir.path().join("bounded.backup");
    std::fs::write(&file, &bounded).unwrap();
    let (ok, done, err) = restore(&file, &dir.path().join("restored-bounded"), &[]);
    assert!(ok, "{err}");
    assert_eq!(done["keys_destroyed"], json!([user]), "{done}");
    assert!(err.contains("no key opens") && err.contains(&user), "{err}");
    serve.stop();

    // A key store that still holds the deleted user's key (read before the shred landed,
    // or a crash between the deletion and the shred): neither a backup restored from it
    // nor the server opening it keeps the key.
    assert!(holds_key_of(&target, &user), "active in the early backup");
    assert!(!holds_key_of(&data, &user), "shredded when deleted");
    std::fs::copy(target.join("keystore"), data.join("keystore")).unwrap();
    assert!(holds_key_of(&data, &user));
    let late = dir.path().join("late.backup");
    let (ok, _, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&late)]);
    assert!(ok, "{err}");
    let again = dir.path().join("restored-late");
    let (ok, _, err) = restore(&late, &again, &[]);
    assert!(ok, "{err}");
    assert!(
        !holds_key_of(&again, &user),
        "restored with a deleted user's key"
    );
    let mut serve = Serve::start(&data, None).await;
    assert!(
        !holds_key_of(&data, &user),
        "served with a deleted user's key"
    );
    serve.stop();
}

/// Whether the key store of `data_dir` holds a data key for `user`'s stream: its
/// `subject:` entry (lines are `base64(key) base64(value)`; a removal rewrites the file
/// without the entry).
pub(crate) fn holds_key_of(data_dir: &Path, user: &str) -> bool {
    use base64::Engine;
    let text = std::fs::read_to_string(data_dir.join("keystore")).unwrap();
    let subject = format!("subject:user-{user}");
    text.lines().skip(1).any(|line| {
        let key = line.split(' ').next().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k == subject.as_bytes())
    })
}

/// Only a copy's tail can be torn (each chunk is on the device before the next is
/// written): a damaged chunk with whole ones after it is refused, by a restore and by a
/// follower resuming, instead of being cut away with the good chunks behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_a_copy_is_refused_and_only_a_torn_tail_is_cut() {
    let (dir, copy, mut serve) = served_with_copy().await;
    let url = serve.url.clone();
    let once = [
        "backup",
        "--server",
        &url,
        "--out",
        path(&copy),
        "--follow",
        "--once",
    ];
    let (mut positions, mut heads) = (Vec::new(), Vec::new());
    for round in 0..2 {
        serve.grow(5, &format!("a{round}")).await;
        let (ok, done, err) = run_with_token(&serve.token, &once).await;
        assert!(ok, "{err}");
        positions.push(done["position"].as_u64().unwrap());
        heads.push(std::fs::read(copy.join("signed-tree-head")).unwrap());
    }
    serve.stop();
    let open = std::fs::read_dir(copy.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("open-")
        })
        .expect("an open segment");
    let good = std::fs::read(&open).unwrap();
    let parts = sections(&good);
    assert_eq!(parts.len(), 2, "one chunk per increment: {parts:?}");

    // A flipped byte in the first chunk: refused, naming the open segment.
    let mut flipped = good.clone();
    let (_, at, len) = parts[0];
    flipped[at + len / 2] ^= 0x20;
    std::fs::write(&open, &flipped).unwrap();
    let (ok, done, err) = restore(&copy, &dir.path().join("r-flipped"), &[]);
    assert!(!ok, "restored a damaged copy: {done}");
    assert!(err.contains("open segment"), "{err}");
    let (ok, _, err) = run_with_token("unused", &once).await;
    assert!(
        !ok && err.contains("open segment"),
        "a follower resumed: {err}"
    );
    assert_eq!(
        std::fs::read(&open).unwrap(),
        flipped,
        "the follower cut it"
    );

    // A first chunk's length overwritten to run past the end, or the segment's header
    // overwritten: each reads like a torn tail, but the copy's signed tree head (kept only
    // after the records it covers were on the device; the server signs at start, so it
    // covers at least one) says records are missing. Refused; nothing is cut.
    let head_after_first = heads[0].clone();
    let mut long = good.clone();
    let (_, at, _) = parts[0];
    long[at + 1..at + 9].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let mut headless = good.clone();
    headless[..4].copy_from_slice(b"XXXX");
    // A header no crash makes is refused for what it is, with or without a head to say
    // records are missing.
    std::fs::remove_file(copy.join("signed-tree-head")).unwrap();
    std::fs::write(&open, &headless).unwrap();
    let (ok, done, err) = restore(&copy, &dir.path().join("r-headless"), &[]);
    assert!(
        !ok,
        "restored a copy whose open segment lost its header: {done}"
    );
    assert!(err.contains("header is damaged"), "{err}");
    std::fs::write(copy.join("signed-tree-head"), &heads[1]).unwrap();
    for (what, damaged, says) in [
        ("length", long, "signed tree head covers"),
        ("header", headless, "header is damaged"),
    ] {
        std::fs::write(&open, &damaged).unwrap();
        let (ok, done, err) = restore(&copy, &dir.path().join(format!("r-{what}")), &[]);
        assert!(!ok, "{what}: restored a damaged copy: {done}");
        assert!(err.contains(says), "{what}: {err}");
        let (ok, _, err) = run_with_token("unused", &once).await;
        assert!(
            !ok && err.contains("open segment"),
            "{what}: a follower resumed: {err}"
        );
        assert_eq!(
            std::fs::read(&open).unwrap(),
            damaged,
            "{what}: the follower cut it"
        );
    }

    // Cut inside the second chunk, as a crash mid-write leaves it (before the head that
    // covers it was kept): the first chunk stands.
    let (_, at, len) = parts[1];
    std::fs::write(&open, &good[..at + len / 2]).unwrap();
    std::fs::write(copy.join("signed-tree-head"), &head_after_first).unwrap();
    let (ok, done, err) = restore(&copy, &dir.path().join("r-torn"), &[]);
    assert!(ok, "{err}");
    assert_eq!(done["position"].as_u64(), Some(positions[0]), "{done}");
    // Cut, but said: a flipped byte in the last chunk would read the same.
    assert!(err.contains("restored without it"), "{err}");
}

/// A copy's sealed segment is a backup file of its own, but carries no key store: restored
/// alone, every secret in it would read as shredded. Refused, unless asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_secrets_and_no_keys_is_restored_only_when_asked() {
    let (dir, copy, mut serve) = served_with_copy().await;
    // A domain's workstation certificate: a sealed private key.
    serve
        .call(
            Method::POST,
            "/v1/domains",
            Some(json!({"domain": "sealed.onmicrosoft.com"})),
        )
        .await;
    let sealed_through = serve.call(Method::GET, "/healthz", None).await["head_position"]
        .as_u64()
        .unwrap();
    serve.grow(sealed_through + 1, "filler").await;
    let (ok, _, err) = run_with_token(
        &serve.token,
        &[
            "backup",
            "--server",
            &serve.url,
            "--out",
            path(&copy),
            "--follow",
            "--once",
            "--segment-records",
            &sealed_through.to_string(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    serve.stop();
    let segment = std::fs::read_dir(copy.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with("open-") && name.ends_with(".backup")
        })
        .min()
        .expect("a sealed segment");
    let target = dir.path().join("r-keyless");
    let (ok, done, err) = restore(&segment, &target, &["--accept-unsigned-tail"]);
    assert!(!ok, "restored secrets without their keys: {done}");
    assert!(err.contains("no key store"), "{err}");
    assert!(!target.exists(), "something was written");
    // A sealed segment alone carries neither the copy's head nor the log key: nothing of
    // it is proven either.
    let (ok, _, err) = restore(&segment, &target, &["--without-keys"]);
    assert!(!ok && err.contains("not proven by the key"), "{err}");
    let (ok, done, err) = restore(
        &segment,
        &target,
        &["--without-keys", "--accept-unsigned-tail"],
    );
    assert!(ok, "{err}");
    assert_eq!(done["domains"], 1, "{done}");
    // The whole copy carries its keys.
    let (ok, _, err) = restore(&copy, &dir.path().join("r-copy"), &[]);
    assert!(ok, "{err}");
}

/// Clients that keep registering domains until aborted: each domain's workstation
/// certificate is a sealed private key under a data key of its own, made as it registers.
fn keep_making_keys(serve: &Serve, clients: usize) -> Vec<tokio::task::JoinHandle<()>> {
    keep_posting(
        serve,
        clients,
        "/v1/domains",
        |c, n| json!({"domain": format!("load{c}-{n}.onmicrosoft.com")}),
    )
}

/// Online backups taken while data keys are being made: the key store is read with the
/// backup's head, so it holds the key of every secret its records seal, and the restore
/// (which checks each one) takes every backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backups_taken_while_keys_are_made_hold_the_key_of_every_secret() {
    let (dir, _, serve) = served_with_copy().await;
    let making = keep_making_keys(&serve, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut domains = Vec::new();
    for round in 0..3 {
        let file = dir.path().join(format!("online-{round}.backup"));
        let (ok, _, err) = run_with_token(
            &serve.token,
            &["backup", "--server", &serve.url, "--out", path(&file)],
        )
        .await;
        assert!(ok, "{err}");
        let (ok, done, err) = restore(&file, &dir.path().join(format!("r-{round}")), &[]);
        assert!(ok, "round {round}: {err}");
        domains.push(done["domains"].as_u64().unwrap());
    }
    making.iter().for_each(|m| m.abort());
    assert!(
        domains[0] > 0 && domains.windows(2).all(|w| w[0] < w[1]),
        "keys were made between the backups: {domains:?}"
    );
}

/// A key store without the key of a secret nothing shreds (a domain's) is refused,
/// naming the stream: restored, the secret would read as shredded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_key_store_lacks_a_key_is_refused_naming_the_subject() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (dir, _, mut serve) = served_with_copy().await;
    let domain = serve
        .call(
            Method::POST,
            "/v1/domains",
            Some(json!({"domain": "keys.onmicrosoft.com"})),
        )
        .await;
    let id = domain["id"].as_str().unwrap().to_owned();
    serve.stop();
    let data = dir.path().join("data");
    let file = dir.path().join("whole.backup");
    let (ok, _, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&file)]);
    assert!(ok, "{err}");
    let (ok, _, err) = restore(&file, &dir.path().join("r-whole"), &[]);
    assert!(ok, "{err}");
    // Every data key taken out of the key store, the rest (subjects, the check) kept.
    let keystore = idledger::secrets::keystore::path_in(&data);
    let text = std::fs::read_to_string(&keystore).unwrap();
    let kept: String = text
        .split_inclusive('\n')
        .filter(|line| {
            let key = line.split(' ').next().unwrap();
            !b64.decode(key).is_ok_and(|k| k.starts_with(b"dk:"))
        })
        .collect();
    assert!(kept.len() < text.len());
    std::fs::write(&keystore, kept).unwrap();
    let keyless = dir.path().join("keyless.backup");
    let (ok, _, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&keyless)]);
    assert!(ok, "{err}");
    let target = dir.path().join("r-keyless");
    let (ok, done, err) = restore(&keyless, &target, &[]);
    assert!(!ok, "restored secrets without their keys: {done}");
    assert!(err.contains("key store"), "{err}");
    assert!(err.contains(&format!("domain-{id}")), "{err}");
    assert!(!target.exists(), "something was written");
    // Asked for, it is restored all the same (the secrets unreadable), as a data dir once
    // restored without its keys must stay restorable.
    let (ok, _, err) = restore(&keyless, &target, &["--without-keys"]);
    assert!(ok, "{err}");
}
