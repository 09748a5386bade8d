//! The CLI over a data dir: log, verify (including damaged stores), replay.

use crate::support::*;
use idledger::store::sled_log::open_raw;
use idledger::store::ExpectedVersion;
use idledger::store::SledEventLog;
use serde_json::json;
use std::path::Path;

/// Fills a data dir with `n` events on a few users, then lets go of it.
fn filled(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = idledger()
        .args([
            "bench",
            "append",
            "--events",
            &n.to_string(),
            "--writers",
            "4",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["bench"], "append");
    assert_eq!(line["events"], n);
    assert!(line["ratio"].as_f64().unwrap() > 0.0);
    dir
}

/// Replaces (or with `None` removes) the record at `position`.
fn damage(dir: &Path, position: u64, f: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>) {
    let store = open_raw(dir).unwrap();
    let record = f(store.record(position).unwrap());
    store.damage(position, record.as_deref()).unwrap();
}

#[test]
fn verify_accepts_an_intact_log() {
    let dir = filled(200);
    let (report, code) = verify(dir.path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["events"], 200);
    assert_eq!(report["head_position"], 200);
    assert_eq!(report["head_hash"].as_str().unwrap().len(), 64);
}

/// `idledger verify | head -c0`: the reader is gone before the report is written. The
/// command says so on stderr and exits 2; it does not panic.
#[test]
fn a_reader_that_went_away_fails_the_command_without_a_panic() {
    let dir = filled(20);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = idledger()
        .arg("verify")
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn verify_names_an_altered_record() {
    let dir = filled(120);
    damage(dir.path(), 37, |mut v| {
        let last = v.len() - 3;
        v[last] ^= 0x20; // one bit of the payload
        Some(v)
    });
    let (report, code) = verify(dir.path());
    assert_eq!(code, 1);
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_position"], 37, "{report}");
}

#[test]
fn verify_names_a_gap_and_garbage() {
    let dir = filled(60);
    damage(dir.path(), 20, |_| None);
    let (report, code) = verify(dir.path());
    assert_eq!(
        (code, report["first_bad_position"].as_u64()),
        (1, Some(21)),
        "{report}"
    );

    let dir = filled(60);
    damage(dir.path(), 9, |_| Some(b"not a record at all".to_vec()));
    let (report, code) = verify(dir.path());
    assert_eq!(
        (code, report["first_bad_position"].as_u64()),
        (1, Some(9)),
        "{report}"
    );
    assert!(
        report["reason"].as_str().unwrap().contains("encoding"),
        "{report}"
    );
}

/// A store that cannot be opened (none there, or a running server holds it) checked
/// nothing: exit 2 with one JSON line saying so, never a chain found broken. A store whose
/// files are garbage is damage: exit 1.
#[tokio::test]
async fn verify_tells_a_store_it_cannot_open_from_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let (report, code) = verify(dir.path());
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        (&report["ok"], &report["checked"]),
        (&json!(false), &json!(false))
    );
    assert!(
        report["error"].as_str().unwrap().contains("no store"),
        "{report}"
    );

    let dir = filled(10);
    let held = SledEventLog::open(dir.path()).unwrap();
    let (report, code) = verify(dir.path());
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["checked"], false, "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("lock"),
        "{report}"
    );
    drop(held);

    for entry in std::fs::read_dir(dir.path().join("store")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::write(&p, b"\xff garbage \xff").unwrap();
        }
    }
    let out = idledger()
        .arg("verify")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["ok"], false);
}

#[tokio::test]
async fn log_prints_envelopes_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = SledEventLog::open(dir.path()).unwrap();
        for n in 0..10u128 {
            append(
                &*log,
                user(n % 2),
                ExpectedVersion::Any,
                vec![some_user_event(n as u64)],
            )
            .await;
        }
    }
    wait_released(dir.path()).await;
    let run = |args: &[&str]| {
        String::from_utf8(run_ok("log", dir.path(), args))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let all = run(&[]);
    assert_eq!(all.len(), 10);
    for key in [
        "position",
        "stream",
        "version",
        "event_id",
        "recorded_at",
        "actor",
        "kind",
        "schema",
        "payload",
        "prev_hash",
        "hash",
    ] {
        assert!(all[0].get(key).is_some(), "missing {key}");
    }
    let stream = format!("user-{}", user(1));
    let one = run(&["--stream", &stream, "--from-position", "3", "--limit", "2"]);
    assert_eq!(one.len(), 2);
    assert!(one.iter().all(|e| e["stream"] == stream.as_str()));
    assert_eq!(one[0]["position"], 4);
}

#[test]
fn replay_until_a_position_is_a_prefix() {
    let dir = filled(50);
    let run = |args: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&run_ok("replay", dir.path(), args)).unwrap()
    };
    let full = run(&[]);
    assert_eq!(full["position"], 50);
    let part = run(&["--until-position", "10"]);
    assert_eq!(part["position"], 10);
    let users = part["users"]["by_id"].as_array().unwrap().len();
    assert!((1..=10).contains(&users), "{users}");
    let time = full["recorded_at"].as_str().unwrap();
    assert_eq!(run(&["--until-time", time])["position"], 50);
    assert_eq!(
        run(&["--until-time", "2000-01-01T00:00:00Z"])["position"],
        0
    );
}

/// Long work draws a bar on a terminal and nothing when stderr is piped. `script` (in
/// Debian's essential bsdutils) gives the command a pseudo-terminal.
#[test]
fn verify_and_replay_draw_a_bar_on_a_terminal_and_stay_quiet_when_piped() {
    let dir = filled(300);
    let data = dir.path().to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_idledger");
    for command in ["verify", "replay"] {
        let on_terminal = std::process::Command::new("script")
            .args([
                "-qec",
                &format!("'{bin}' {command} --data-dir '{data}'"),
                "/dev/null",
            ])
            .env("IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR", "true")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let seen = String::from_utf8_lossy(&on_terminal.stdout);
        assert!(on_terminal.status.success(), "{command}: {seen}");
        assert!(
            seen.contains(&format!("{command} [00:00:")) && seen.contains("/300"),
            "{command} drew no bar on a terminal: {seen:?}"
        );

        let out = idledger()
            .arg(command)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            !out.stderr.contains(&0x1b) && !String::from_utf8_lossy(&out.stderr).contains("[00:"),
            "{command} drew on a pipe: {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A data dir a restore left half done is not backed up: its key store may be missing.
#[test]
fn a_half_restored_data_dir_is_not_backed_up() {
    let dir = filled(20);
    std::fs::create_dir(dir.path().join(".restoring")).unwrap();
    let out = dir.path().join("b.idlbackup");
    let run = idledger()
        .args(["backup", "--data-dir"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(err.contains("interrupted restore"), "{err}");
    assert!(!out.exists());
}

/// A data dir whose data keys an earlier build kept in sled (moved out at the first
/// `serve` of this one) is not backed up: only the key store file is, and every secret
/// would come back unreadable.
#[test]
fn a_data_dir_with_its_keys_still_in_sled_is_not_backed_up() {
    let dir = filled(20);
    {
        let db = sled::open(dir.path().join("store")).unwrap();
        db.open_tree("keys")
            .unwrap()
            .insert(b"user-1", b"wrapped")
            .unwrap();
        db.flush().unwrap();
    }
    let out = dir.path().join("b.idlbackup");
    let run = idledger()
        .args(["backup", "--data-dir"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(err.contains("run `serve` on it once"), "{err}");
    assert!(!out.exists());
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["demo", "--help"],
        vec!["log", "--help"],
        vec!["verify", "--help"],
        vec!["replay", "--help"],
        vec!["bench", "append", "--help"],
        vec!["bench", "replay", "--help"],
    ] {
        let out = idledger().args(&cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
}

#[test]
fn demo_syncs_contoso_from_graphsim_and_a_second_run_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Its sign-in links name `localhost`: another address is refused before anything runs.
    let out = idledger()
        .args(["demo", "--once", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    let demo = || {
        let out = idledger()
            .args(["demo", "--once", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{raw}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "the demo logs");
        assert!(
            !out.stderr.contains(&0x1b),
            "colour codes in piped logs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<String> = raw
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        (raw, lines)
    };
    let (raw, text) = demo();
    for want in [
        "imported 29",
        "keys assigned 10",
        "rotations 9 succeeded, 1 refused by Graph",
        "key writes 9 confirmed by the agent",
        "users active 29",
        "verify ok",
    ] {
        assert!(text.iter().any(|l| l == want), "{want:?} not in {raw}");
    }
    assert!(
        text.iter()
            .any(|l| l.starts_with("sync run ") && l.contains("succeeded (added 29,")),
        "{raw}"
    );
    assert!(
        text.iter().any(|l| l.starts_with("admin token idl_")),
        "{raw}"
    );
    let (raw, text) = demo();
    assert!(text.iter().any(|l| l == "imported 0"), "{raw}");
    assert!(text.iter().any(|l| l == "users active 29"), "{raw}");
    let out = idledger()
        .args(["verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn bench_sync_reports_both_runs_and_the_serve_process_memory() {
    let out = idledger()
        .args(["bench", "sync", "--users", "300", "--changes", "40"])
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{raw} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(v["bench"], "sync");
    // 300 generated members and contoso's 29 enabled ones.
    assert_eq!(v["first_counters"]["added"], 329, "{v}");
    let c = &v["incremental_counters"];
    assert_eq!(c["added"], 10, "{v}");
    assert_eq!(c["left"], 10, "{v}");
    assert_eq!(c["deleted"], 10, "{v}");
    assert_eq!(c["changed"], 10, "{v}");
    assert!(v["serve_rss_mib"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bench_rotate_rotates_every_due_user_within_the_limit() {
    let out = idledger()
        .args([
            "bench",
            "rotate",
            "--users",
            "60",
            "--concurrency",
            "3",
            "--graph-latency-ms",
            "5",
        ])
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{raw} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(v["rotated"], 60, "{v}");
    assert_eq!(v["graph_password_changes"], 60, "{v}");
    assert!(
        v["max_concurrent_patches_seen"].as_u64().unwrap() <= 3,
        "{v}"
    );
}

#[test]
fn bench_export_exports_and_verifies_every_password_change() {
    let out = idledger()
        .args(["bench", "export", "--events", "700"])
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{raw} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(v["rows"], 700, "{v}");
    assert_eq!(v["verified"], true, "{v}");
}

/// `serve` on an address users would reach, with no `public_url`, stops before it opens
/// anything: not after folding a large log, and without leaving a half-made data dir.
#[test]
fn serve_without_a_public_url_off_loopback_stops_before_opening_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = idledger()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env_remove("IDLEDGER_PUBLIC_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("public_url"), "{said}");
    let made: Vec<_> = std::fs::read_dir(&data)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(made.is_empty(), "the data dir was opened: {made:?}");
}

/// A plain-http public origin with a listener beyond loopback (a container's port mapped
/// to the host's localhost) starts, and says at once what it exposes.
#[test]
fn serve_warns_of_plain_http_beyond_loopback() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = idledger()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("IDLEDGER_PUBLIC_URL", "http://localhost:8080")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (found, warned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("plain http beyond loopback") {
                let _ = found.send(line);
            }
        }
    });
    let line = warned.recv_timeout(std::time::Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("no warning of plain http beyond loopback");
    assert!(line.contains("WARN"), "{line}");
}
