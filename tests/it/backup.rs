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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_data_dir_answers_as_the_original_did() {
    let dir = tempfile::tempdir().unwrap();
    let (data, restored) = (dir.path().join("data"), dir.path().join("restored"));
    std::fs::create_dir_all(&data).unwrap();
    let sim = sim().await;
    let mut serve = Serve::start(&data, None).await;
    let user = crate::crash::user_with_key(&serve, &sim, &crate::support::ext(3)).await;
    // A rotation, so a sealed password is in the log.
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
            break;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Online, while another client keeps appending: the backup runs to the head when it
    // was asked for, and restores to exactly that record.
    let writing = {
        let (url, token) = (serve.url.clone(), serve.token.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0.. {
                let r = http
                    .post(format!("{url}/v1/tokens"))
                    .bearer_auth(&token)
                    .json(&json!({"role": "auditor", "name": format!("load {n}")}))
                    .send()
                    .await;
                if r.is_err() {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let online = dir.path().join("online.backup");
    let out = {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_idledger"));
        cmd.args(["backup", "--server", &serve.url, "--out", path(&online)])
            .env("IDLEDGER_TOKEN", &serve.token);
        cmd.output().await.unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken: Value = serde_json::from_slice(&out.stdout).unwrap();
    let position = taken["position"].as_u64().unwrap();
    let live = serve
        .call(
            Method::GET,
            &format!("/v1/events?from_position={position}&limit=1"),
            None,
        )
        .await;
    assert_eq!(live["items"][0]["hash"], taken["head_hash"], "{taken}");
    let back = dir.path().join("online-restored");
    let (ok, done, err) = run(&[
        "restore",
        "--from",
        path(&online),
        "--data-dir",
        path(&back),
    ]);
    assert!(ok, "{err}");
    assert_eq!(done["head_hash"], taken["head_hash"]);
    writing.abort();
    serve.stop();
    crate::support::wait_released(&data).await;

    let file = dir.path().join("idledger.backup");
    let (ok, made, err) = run(&["backup", "--data-dir", path(&data), "--out", path(&file)]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&file).unwrap();
    let master = std::fs::read(data.join("master.key")).unwrap();
    assert!(
        !bytes.windows(master.len()).any(|w| w == master.as_slice()),
        "the master key is in the backup"
    );
    // A second backup into the same file is refused: nothing is overwritten.
    let (ok, _, _) = run(&["backup", "--data-dir", path(&data), "--out", path(&file)]);
    assert!(!ok);

    let (ok, done, err) = run(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(&restored),
    ]);
    assert!(ok, "{err}");
    assert_eq!(done["head_hash"], made["head_hash"], "{done} {made}");
    assert_eq!(done["position"], made["position"]);
    assert!(done["users"].as_u64().unwrap() > 0, "{done}");
    // Into a data dir that holds something: refused.
    let (ok, _, err) = run(&["restore", "--from", path(&file), "--data-dir", path(&data)]);
    assert!(!ok && err.contains("not empty"), "{err}");
    let (verified, code) = crate::support::verify(&restored);
    assert_eq!(code, 0, "{verified}");
    assert_eq!(verified["head_hash"], made["head_hash"]);

    // Served with the same master key (and the admin's token, which lives in the log),
    // the restored dir answers as the original does.
    std::fs::copy(data.join("master.key"), restored.join("master.key")).unwrap();
    std::fs::copy(data.join("admin.token"), restored.join("admin.token")).unwrap();
    let mut answers = Vec::new();
    for d in [&data, &restored] {
        let mut s = Serve::start(d, None).await;
        let users = s.call(Method::GET, "/v1/users?limit=1000", None).await;
        let events = s.call(Method::GET, "/v1/events?limit=1000", None).await;
        let revealed = s
            .call(
                Method::POST,
                &format!("/v1/users/{user}/password/reveal"),
                Some(json!({"reason": "backup test"})),
            )
            .await;
        answers.push((
            users,
            events["items"].as_array().unwrap()[..5].to_vec(),
            revealed["password"].clone(),
        ));
        s.stop();
        crate::support::wait_released(d).await;
    }
    assert_eq!(answers[0].0, answers[1].0, "the users differ");
    assert_eq!(answers[0].1, answers[1].1, "the first events differ");
    assert!(answers[0].2.is_string());
    assert_eq!(answers[0].2, answers[1].2, "reveal differs");
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
    for (name, file, says) in [
        ("flipped", flipped, "chunk 2"),
        ("cut", cut, "truncated"),
        ("missing", missing, "chunk 2 (positions 10001–20000)"),
        ("manifest", wrong_manifest, "manifest"),
    ] {
        let f = dir.path().join(format!("{name}.backup"));
        std::fs::write(&f, &file).unwrap();
        let target = dir.path().join(format!("restore-{name}"));
        let (ok, _, err) = run(&["restore", "--from", path(&f), "--data-dir", path(&target)]);
        assert!(!ok, "{name}: restored");
        assert!(err.contains(says), "{name}: {err}");
        assert!(!target.exists(), "{name}: something was written");
    }
    // The good file restores.
    let target = dir.path().join("restore-good");
    let (ok, done, err) = run(&[
        "restore",
        "--from",
        path(&good),
        "--data-dir",
        path(&target),
    ]);
    assert!(ok, "{err}");
    assert_eq!(done["head_hash"], made["head_hash"]);
}
