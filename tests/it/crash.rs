//! SIGKILL a process appending under load, again and again; every acknowledged event
//! must survive and the chain must verify.

use crate::support::*;
use idledger::store::{EventLog, SledEventLog};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn ack_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acks = dir.path().join("acks.txt");
    let data = dir.path().join("data");
    for round in 0..6 {
        let before = ack_lines(&acks);
        let mut child = idledger()
            .args([
                "bench",
                "append",
                "--events",
                "10000000",
                "--writers",
                "32",
                "--event-bytes",
                "200",
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--ack-file")
            .arg(&acks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different depth each round, always mid-stream.
        let target = before + 500 + round * 700;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ack_lines(&acks) < target {
            assert!(Instant::now() < deadline, "round {round}: no progress");
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let text = std::fs::read_to_string(&acks).unwrap();
    // A line may be cut by the kill; only whole lines count as acknowledged.
    let acked: HashMap<u64, String> = text
        .lines()
        .filter_map(|l| {
            let (p, id) = l.split_once(' ')?;
            let p: u64 = p.parse().ok()?;
            (id.len() == 36).then(|| (p, id.to_owned()))
        })
        .collect();
    assert!(
        acked.len() > 3000,
        "too few acknowledgements: {}",
        acked.len()
    );
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "{report}");
    let log = SledEventLog::open(&data).unwrap();
    let all: HashMap<u64, String> = idledger::store::envelopes(&*log, 1)
        .map(|e| e.map(|e| (e.position, e.event_id.hyphenated().to_string())))
        .collect::<Result<_, _>>()
        .unwrap();
    for (pos, id) in &acked {
        assert_eq!(
            all.get(pos),
            Some(id),
            "acknowledged event at {pos} is missing or different"
        );
    }
    assert_eq!(log.head().position, all.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_serve_loses_no_answered_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut answered: Vec<String> = Vec::new();
    for round in 0..3 {
        let mut serve = Serve::start(&data, None).await;
        let (http, url, token) = (serve.http.clone(), serve.url.clone(), serve.token.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut flood = Vec::new();
        for w in 0..16 {
            let (http, url, token, tx) = (http.clone(), url.clone(), token.clone(), tx.clone());
            flood.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("r{round}-w{w}-n{i}.onmicrosoft.com");
                    let sent = http
                        .post(format!("{url}/v1/domains"))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"domain": name}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            if let Ok(body) = r.json::<serde_json::Value>().await {
                                let _ = tx.send(body["id"].as_str().unwrap_or_default().to_owned());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        drop(tx);
        // Kill mid-flood, at a different depth each round.
        let want = answered.len() + 150 + round * 50;
        while answered.len() < want {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the flood stalled")
            {
                Some(id) => answered.push(id),
                None => panic!("every writer stopped before the kill"),
            }
        }
        serve.child.kill().unwrap(); // SIGKILL
        serve.child.wait().unwrap();
        for f in flood {
            let _ = f.await;
        }
        // Answers that arrived just before the kill count too.
        while let Ok(id) = rx.try_recv() {
            answered.push(id);
        }
    }
    assert!(answered.len() >= 450, "{} answered", answered.len());
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "{report}");
    let log = SledEventLog::open(&data).unwrap();
    for id in &answered {
        let stream = idledger_domain::StreamId::new(format!("domain-{id}")).unwrap();
        assert!(
            log.stream_version(&stream) >= 1,
            "domain {id} was answered 2xx but is not in the log"
        );
    }
}

/// Where the first `serve` dies during a rotation.
#[derive(Clone, Copy, Debug)]
enum RotationCrash {
    /// After `RotationStarted` is durable, before Graph is called.
    AfterStarted,
    /// While graphsim holds the password PATCH.
    WhileGraphHolds,
    /// After Graph answered, before `RotationSucceeded`.
    AfterGraphAnswered,
}

/// Starts a sync run of `domain` and waits (20 s at most) until it is no longer running;
/// answers the run.
async fn sync_until_done(serve: &Serve, domain: &str) -> serde_json::Value {
    use reqwest::Method;
    let run = serve
        .call(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
        .await;
    let run = run["run_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = serve
            .call(
                Method::GET,
                &format!("/v1/domains/{domain}/sync-runs/{run}"),
                None,
            )
            .await;
        if r["status"] != "running" {
            return r;
        }
        assert!(Instant::now() < deadline, "still running: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds the contoso domain against graphsim at `sim`, syncs it, assigns a key to the user
/// with Entra object id `external`; answers the user's id.
pub(crate) async fn user_with_key(serve: &Serve, sim: &str, external: &str) -> String {
    use reqwest::Method;
    use serde_json::json;
    let domain = contoso_domain(serve, sim, json!({"auto_import": true})).await;
    let run = sync_until_done(serve, &domain).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let users = serve
        .call(
            Method::GET,
            &format!("/v1/users?domain={domain}&limit=1000"),
            None,
        )
        .await;
    let user = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["external_id"] == external)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    serve
        .call(
            Method::PUT,
            &format!("/v1/users/{user}/key"),
            Some(json!({"key_id": "K-0003"})),
        )
        .await;
    user
}

async fn crash_during_rotation(crash: RotationCrash) {
    use reqwest::Method;
    use serde_json::json;
    let (sim, _sim) = graphsim::spawn(contoso(), graphsim::SimConfig::default())
        .await
        .unwrap();
    let external = "c0a80000-0000-4000-8000-000000000003";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let crash_at = match crash {
        RotationCrash::AfterStarted => Some("after_started"),
        RotationCrash::AfterGraphAnswered => Some("after_graph"),
        RotationCrash::WhileGraphHolds => None,
    };
    let mut first = Serve::start(&data, crash_at).await;
    let user = user_with_key(&first, &sim, external).await;
    if let RotationCrash::WhileGraphHolds = crash {
        reqwest::Client::new()
            .post(format!("{sim}/_sim/faults"))
            .json(&json!({"method": "PATCH", "path_prefix": "/v1.0/users", "delay_ms": 5000, "count": 1}))
            .send()
            .await
            .unwrap();
    }
    // The answer may never come: the process may die first.
    let _ = first
        .http
        .post(format!("{}/v1/users/{user}/rotate", first.url))
        .bearer_auth(&first.token)
        .send()
        .await;
    match crash {
        RotationCrash::WhileGraphHolds => {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen: Vec<serde_json::Value> = reqwest::get(format!("{sim}/_sim/requests"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if seen.iter().any(|r| r["method"] == "PATCH") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the PATCH never reached graphsim"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            first.child.kill().unwrap(); // SIGKILL while the PATCH is held
        }
        _ => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while first.child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{crash:?}: serve did not stop at the crash point"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    first.child.wait().unwrap();

    // After a restart the rotation resumes with its own password and ends once.
    let mut second = Serve::start(&data, None).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let history = loop {
        let h = second
            .call(
                Method::GET,
                &format!("/v1/users/{user}/password-history"),
                None,
            )
            .await;
        let items = h["items"].as_array().unwrap().clone();
        if !items.is_empty() && items.iter().all(|r| r["outcome"] != "pending") {
            break items;
        }
        assert!(Instant::now() < deadline, "{crash:?}: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(history.len(), 1, "{crash:?}: {history:?}");
    assert_eq!(history[0]["outcome"], "succeeded", "{crash:?}: {history:?}");
    let revealed = second
        .call(
            Method::POST,
            &format!("/v1/users/{user}/password/reveal"),
            Some(json!({"reason": "crash test"})),
        )
        .await;
    let in_graph: serde_json::Value = reqwest::get(format!("{sim}/_sim/users/{external}/password"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revealed["password"], in_graph["password"], "{crash:?}");
    let events = second
        .call(Method::GET, &format!("/v1/users/{user}/events"), None)
        .await;
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for e in events["items"].as_array().unwrap() {
        if e["kind"] == "RotationSucceeded" || e["kind"] == "RotationFailed" {
            *outcomes
                .entry(e["payload"]["rotation_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(outcomes.len(), 1, "{crash:?}: {outcomes:?}");
    assert!(
        outcomes.values().all(|n| *n == 1),
        "{crash:?}: {outcomes:?}"
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "{report}");
}

/// With `durability = "process"` an acknowledged append may be lost with the machine, but
/// a new password never: under strace, the store's write of `RotationStarted` is synced to
/// the device before the PATCH that sets the password leaves for Graph, and a reveal's
/// record before the answer carrying the password, and a key write's delivery before the
/// agent's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_is_on_the_device_before_graph_sees_it_in_either_durability() {
    let (sim, _sim) = graphsim::spawn(contoso(), graphsim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let trace = dir.path().join("serve.trace");
    let strace = [
        "strace",
        "-f",
        "-qq",
        "-yy",
        "-s",
        "48",
        "-e",
        "trace=fdatasync,fsync,pwrite64,pwritev,write,writev,sendto,sendmsg",
        "-o",
        trace.to_str().unwrap(),
    ];
    let mut serve =
        Serve::start_under(&strace, &data, None, &[("IDLEDGER_DURABILITY", "process")]).await;
    let user = user_with_key(&serve, &sim, "c0a80000-0000-4000-8000-000000000003").await;
    crate::backup::rotated(&serve, &user).await;
    // A reveal, last: its record is on the device before the password leaves in the answer.
    serve
        .call(
            reqwest::Method::POST,
            &format!("/v1/users/{user}/password/reveal"),
            Some(serde_json::json!({"reason": "strace"})),
        )
        .await;
    // The agent's poll, last: the write's delivery is on the device before the password
    // leaves for the key.
    let agent = serve
        .call(
            reqwest::Method::POST,
            "/v1/tokens",
            Some(serde_json::json!({"role": "agent", "key_ids": ["K-0003"]})),
        )
        .await;
    let writes: serde_json::Value = serve
        .http
        .get(format!("{}/v1/agent/key-writes", serve.url))
        .bearer_auth(agent["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(writes["items"][0]["password"].is_string(), "{writes}");
    serve.stop_group();
    let trace = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let synced_before = |what: &str, at: usize| {
        let db = "/store/db>";
        let written = lines[..at]
            .iter()
            .rposition(|l| l.contains("write") && l.contains(db))
            .unwrap_or_else(|| panic!("no write of the store before the {what}"));
        let synced = lines[..at]
            .iter()
            .rposition(|l| l.contains("sync(") && l.contains(db));
        assert!(
            synced.is_some_and(|s| s > written),
            "the store's last write (line {written}) is not synced (line {synced:?}) before the {what} (line {at})"
        );
    };
    let patch = lines
        .iter()
        .position(|l| l.contains("PATCH /v1.0/users/"))
        .unwrap_or_else(|| panic!("no PATCH seen:\n{trace}"));
    synced_before("PATCH", patch);
    let revealed = lines
        .iter()
        .rposition(|l| l.contains("write") && l.contains("TCP") && l.contains("user_id"))
        .unwrap_or_else(|| panic!("no reveal answer seen:\n{trace}"));
    synced_before("reveal's answer", revealed);
    let delivered = lines
        .iter()
        .rposition(|l| l.contains("write") && l.contains("TCP") && l.contains("{\\\"items\\\":[{"))
        .unwrap_or_else(|| panic!("no key-write answer seen:\n{trace}"));
    assert!(delivered > revealed);
    synced_before("key write's delivery", delivered);
}

/// A drive that panics (a bug in one task; the process goes on) lets go of its rotation:
/// the scheduler's next look drives it to its outcome, rather than every look taking it for
/// driven by a task that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_drive_panicked_is_driven_again() {
    let (sim, _sim, _dir, data) = contoso_and_data_dir().await;
    let external = "c0a80000-0000-4000-8000-000000000003";
    let serve = Serve::start_with(&data, None, &[("IDLEDGER_TEST_PANIC_AT", "after_graph")]).await;
    let user = user_with_key(&serve, &sim, external).await;
    serve
        .call(
            reqwest::Method::POST,
            &format!("/v1/users/{user}/rotate"),
            None,
        )
        .await;
    let history = history_settled(&serve, &user, 1).await;
    assert_eq!(history.len(), 1, "{history:?}");
    let (in_graph, current, _) = passwords(&serve, &sim, &user, external).await;
    assert_eq!(
        current,
        in_graph.as_str(),
        "the engine holds what Graph holds"
    );
    // Graph may have set the password before the panic: the next drive is a resumption,
    // recorded as one (a refusal after it could no longer end the rotation as failed).
    let kinds = user_event_kinds(&serve, &user).await;
    assert!(
        kinds.iter().any(|k| k == "RotationInterrupted"),
        "{kinds:?}"
    );
}

/// A sync run that panics (a bug in its task; the process goes on) ends as failed, on
/// record, at once: not `running` until the next start, holding up every later run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_run_that_panicked_is_recorded_as_failed_and_the_next_runs() {
    use reqwest::Method;
    let (sim, _sim, _dir, data) = contoso_and_data_dir().await;
    let serve = Serve::start_with(
        &data,
        None,
        &[("IDLEDGER_TEST_PANIC_AT", "sync_before_users")],
    )
    .await;
    let domain = contoso_domain(&serve, &sim, serde_json::json!({})).await;
    // The first run to reach the users panics: this one, or one the schedule started.
    sync_until_done(&serve, &domain).await;
    let runs = serve
        .call(
            Method::GET,
            &format!("/v1/domains/{domain}/sync-runs?limit=100"),
            None,
        )
        .await;
    let runs = runs["items"].as_array().unwrap();
    assert!(runs.iter().all(|r| r["status"] != "running"), "{runs:?}");
    assert!(
        runs.iter().any(|r| r["status"] == "failed"
            && r["error"].as_str().unwrap_or("").contains("internal error")),
        "{runs:?}"
    );
    let next = sync_until_done(&serve, &domain).await;
    assert_eq!(next["status"], "succeeded", "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_rotation_started_resumes_with_the_same_password() {
    crash_during_rotation(RotationCrash::AfterStarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_graph_holds_the_patch_resumes_with_the_same_password() {
    crash_during_rotation(RotationCrash::WhileGraphHolds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_graph_answered_resumes_with_the_same_password() {
    crash_during_rotation(RotationCrash::AfterGraphAnswered).await;
}

/// Graph's current password of `external`, and the engine's (reveal: current, candidate).
async fn passwords(
    serve: &Serve,
    sim: &str,
    user: &str,
    external: &str,
) -> (String, serde_json::Value, serde_json::Value) {
    let in_graph: serde_json::Value = reqwest::get(format!("{sim}/_sim/users/{external}/password"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revealed = serve
        .call(
            reqwest::Method::POST,
            &format!("/v1/users/{user}/password/reveal"),
            Some(serde_json::json!({"reason": "crash test"})),
        )
        .await;
    (
        in_graph["password"].as_str().unwrap().to_owned(),
        revealed["password"].clone(),
        revealed["unconfirmed_candidate"]["password"].clone(),
    )
}

pub(crate) async fn add_fault(sim: &str, fault: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{sim}/_sim/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// The kinds of a user's events, oldest first.
async fn user_event_kinds(serve: &Serve, user: &str) -> Vec<String> {
    let events = serve
        .call(
            reqwest::Method::GET,
            &format!("/v1/users/{user}/events?limit=1000"),
            None,
        )
        .await;
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

pub(crate) async fn history_settled(serve: &Serve, user: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let h = serve
            .call(
                reqwest::Method::GET,
                &format!("/v1/users/{user}/password-history"),
                None,
            )
            .await;
        let items = h["items"].as_array().unwrap().clone();
        if items.len() >= n && items.iter().all(|r| r["outcome"] == "succeeded") {
            return items;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hole 1: Graph set the password, the process died before recording it, and the resumed
/// rotation's first attempt is refused (the token endpoint answers 400 once). The refusal
/// proves nothing about the lost answer: the rotation must not end as a definite failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_a_lost_answer_keeps_the_candidate_until_graph_confirms_it() {
    let (sim, _sim, _dir, data) = contoso_and_data_dir().await;
    let external = "c0a80000-0000-4000-8000-000000000003";
    let mut first = Serve::start(&data, Some("after_graph")).await;
    let user = user_with_key(&first, &sim, external).await;
    let _ = first
        .http
        .post(format!("{}/v1/users/{user}/rotate", first.url))
        .bearer_auth(&first.token)
        .send()
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "serve did not stop after Graph answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let set_by_graph = reqwest::get(format!("{sim}/_sim/users/{external}/password"))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["password"]
        .clone();
    // The next process's first token request is refused, definitely.
    add_fault(
        &sim,
        serde_json::json!({"method": "POST", "path_prefix": "/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/oauth2", "status": 400, "count": 1}),
    )
    .await;
    let mut second = Serve::start(&data, None).await;
    let history = history_settled(&second, &user, 1).await;
    assert_eq!(history.len(), 1, "{history:?}");
    let (in_graph, current, _) = passwords(&second, &sim, &user, external).await;
    assert_eq!(in_graph, set_by_graph.as_str().unwrap());
    assert_eq!(current, set_by_graph, "the engine holds what Graph holds");
    let kinds: Vec<String> = user_event_kinds(&second, &user)
        .await
        .into_iter()
        .filter(|k| k.starts_with("Rotation"))
        .collect();
    assert!(!kinds.iter().any(|k| k == "RotationFailed"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "RotationInterrupted"),
        "{kinds:?}"
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

/// Hole 2: a PATCH held by Graph outlives the process; after a restart the rotation
/// resumes and succeeds, and an admin asks for a new one at once. The new password must
/// wait for the uncertainty window, and the current one is sent again first, so the late
/// request cannot land after the new password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_password_while_a_held_request_may_still_land() {
    let (sim, sim_state, _dir, data) = contoso_and_data_dir().await;
    let external = "c0a80000-0000-4000-8000-000000000003";
    let env = [
        ("IDLEDGER_GRAPH_TIMEOUT_SECS", "3"),
        ("IDLEDGER_ROTATION_UNCERTAINTY_SECS", "4"),
    ];
    let mut first = Serve::start_with(&data, None, &env).await;
    let user = user_with_key(&first, &sim, external).await;
    add_fault(
        &sim,
        serde_json::json!({"method": "PATCH", "path_prefix": "/v1.0/users", "delay_ms": 2500,
                           "complete_after_disconnect": true, "count": 1}),
    )
    .await;
    let _ = first
        .http
        .post(format!("{}/v1/users/{user}/rotate", first.url))
        .bearer_auth(&first.token)
        .send()
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sim_state
        .lock()
        .requests
        .iter()
        .any(|r| r.method == "PATCH")
    {
        assert!(
            Instant::now() < deadline,
            "the PATCH never reached graphsim"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.child.kill().unwrap(); // SIGKILL while Graph holds the PATCH
    first.child.wait().unwrap();

    let mut second = Serve::start_with(&data, None, &env).await;
    history_settled(&second, &user, 1).await;
    let asked = second
        .call(
            reqwest::Method::POST,
            &format!("/v1/users/{user}/rotate"),
            None,
        )
        .await;
    assert!(
        asked["rotation_id"].is_null(),
        "a new password inside the window: {asked}"
    );
    assert!(asked["deferred_until"].is_string(), "{asked}");
    // The reassert and then the deferred rotation run once the window has passed.
    let history = history_settled(&second, &user, 3).await;
    let reasons: Vec<&str> = history
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["manual", "reassert", "manual"], "{history:?}");
    // Graph applied: the first rotation's password (late, from the dead process, and
    // again on resume, in either order), the reassert, then the new one, which holds.
    let log: Vec<String> = sim_state
        .lock()
        .password_log
        .iter()
        .filter(|p| p.user == external)
        .map(|p| p.password.clone())
        .collect();
    assert_eq!(log.len(), 4, "{} passwords set", log.len());
    assert!(log[..3].iter().all(|p| *p == log[0]));
    let (in_graph, current, candidate) = passwords(&second, &sim, &user, external).await;
    assert_eq!(in_graph, log[3]);
    assert_eq!(
        current,
        in_graph.as_str(),
        "the engine holds what Graph holds"
    );
    assert!(candidate.is_null());
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "{report}");
}

/// A run that was going when the process died is closed as failed by the next process:
/// no run stays `running` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_interrupted_by_a_crash_is_closed_on_restart() {
    use reqwest::Method;
    use serde_json::json;
    let (sim, _sim, _dir, data) = contoso_and_data_dir().await;
    let mut first = Serve::start(&data, None).await;
    let domain = contoso_domain(&first, &sim, json!({})).await;
    add_fault(
        &sim,
        json!({"path_prefix": "/v1.0/groups", "delay_ms": 20000, "count": 100}),
    )
    .await;
    let run = first
        .call(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
        .await;
    let run = run["run_id"].as_str().unwrap().to_owned();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = Serve::start(&data, None).await;
    let r = second
        .call(
            Method::GET,
            &format!("/v1/domains/{domain}/sync-runs/{run}"),
            None,
        )
        .await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"], "interrupted by a restart", "{r}");
}

/// Rotations found open at start are on record as interrupted at once, not when their
/// domain's turn comes (one at a time here): until then reveal and the rules would take
/// the attempt the dead process sent for one never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_found_open_are_recorded_interrupted_before_their_turn() {
    use reqwest::Method;
    use serde_json::json;
    let (sim, sim_state, _dir, data) = contoso_and_data_dir().await;
    let env = [("IDLEDGER_GRAPH_TIMEOUT_SECS", "30")];
    let mut first = Serve::start_with(&data, None, &env).await;
    let a = user_with_key(&first, &sim, "c0a80000-0000-4000-8000-000000000003").await;
    let users = first.call(Method::GET, "/v1/users?limit=1000", None).await;
    let b_view = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["external_id"] == "c0a80000-0000-4000-8000-000000000004")
        .unwrap()
        .clone();
    let b = b_view["id"].as_str().unwrap().to_owned();
    let domain = b_view["domain_id"].as_str().unwrap().to_owned();
    first
        .call(
            Method::PUT,
            &format!("/v1/users/{b}/key"),
            Some(json!({"key_id": "K-0004"})),
        )
        .await;
    first
        .call(
            Method::PATCH,
            &format!("/v1/domains/{domain}"),
            Some(json!({"max_concurrent_rotations": 1})),
        )
        .await;
    // Graph holds both PATCHes; the process dies with both rotations open.
    add_fault(
        &sim,
        json!({"method": "PATCH", "path_prefix": "/v1.0/users", "delay_ms": 20000, "count": 2}),
    )
    .await;
    for user in [&a, &b] {
        let r = first
            .call(Method::POST, &format!("/v1/users/{user}/rotate"), None)
            .await;
        assert!(r["rotation_id"].is_string(), "{r}");
    }
    let patches = || {
        sim_state
            .lock()
            .requests
            .iter()
            .filter(|r| r.method == "PATCH")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while patches() < 2 {
        assert!(
            Instant::now() < deadline,
            "the PATCHes never reached graphsim"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // The next process's first attempt is held for long: the other waits for its turn,
    // and is on record as interrupted well before that turn comes.
    add_fault(
        &sim,
        json!({"method": "PATCH", "path_prefix": "/v1.0/users", "delay_ms": 8000, "count": 1}),
    )
    .await;
    let mut second = Serve::start_with(&data, None, &env).await;
    let started = Instant::now();
    let interrupted = |events: &serde_json::Value| {
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "RotationInterrupted")
    };
    loop {
        let mut both = true;
        for user in [&a, &b] {
            let events = second
                .call(Method::GET, &format!("/v1/users/{user}/events"), None)
                .await;
            both &= interrupted(&events);
        }
        if both {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a rotation found open waits for its turn to be on record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both end with the password Graph holds.
    history_settled(&second, &a, 1).await;
    history_settled(&second, &b, 1).await;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

/// Runs a sync of `domain` on `serve` and answers the run as it ended (`None`: the process
/// died first).
async fn run_sync(serve: &Serve, domain: &str) -> Option<serde_json::Value> {
    use reqwest::Method;
    let run = serve
        .call(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
        .await;
    let run = run["run_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Ok(r) = serve
            .http
            .get(format!("{}/v1/domains/{domain}/sync-runs/{run}", serve.url))
            .bearer_auth(&serve.token)
            .send()
            .await
        else {
            return None;
        };
        let r: serde_json::Value = r.json().await.unwrap();
        if r["status"] != "running" {
            return Some(r);
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The statuses of the contoso users 1..=6 on `serve`.
async fn leavers(serve: &Serve, domain: &str) -> Vec<(String, bool)> {
    let users = serve
        .call(
            reqwest::Method::GET,
            &format!("/v1/users?domain={domain}&limit=1000"),
            None,
        )
        .await;
    let mut out: Vec<(String, String, bool)> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| (1..=6).any(|n| u["external_id"] == format!("c0a80000-0000-4000-8000-{n:012}")))
        .map(|u| {
            (
                u["external_id"].as_str().unwrap().to_owned(),
                u["status"].as_str().unwrap().to_owned(),
                u["in_sync_group"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, s, g)| (s, g)).collect()
}

/// A mass removal held by the deletion guard stays held when the run dies after its
/// users' leaving is on record but before its end: the held list is on record first, so
/// an admin can still approve it, and the next run (which sees those users out already)
/// neither forgets them nor removes the rest unapproved. An approval cut short by a crash
/// is finished by the next process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_removals_survive_a_crash_of_the_run_and_of_the_approval() {
    use reqwest::Method;
    use serde_json::json;
    let (sim, _sim, _dir, data) = contoso_and_data_dir().await;
    let mut first = Serve::start(&data, Some("sync_held_before_end")).await;
    let domain = contoso_domain(
        &first,
        &sim,
        json!({"auto_import": true, "deletion_threshold": 3}),
    )
    .await;
    let run = run_sync(&first, &domain).await.unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    let http = reqwest::Client::new();
    for n in 1..=6 {
        let r = http
            .delete(format!(
                "{sim}/_sim/groups/a1b2c3d4-0000-4000-8000-000000000001/members/c0a80000-0000-4000-8000-{n:012}"
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // The run is held, and dies before it ends.
    assert!(run_sync(&first, &domain).await.is_none());
    first.child.wait().unwrap();

    let mut second = Serve::start(&data, Some("approve_before_removals")).await;
    let out = leavers(&second, &domain).await;
    assert_eq!(
        out,
        vec![("active".to_owned(), false); 6],
        "held, not removed"
    );
    let d = second
        .call(Method::GET, &format!("/v1/domains/{domain}"), None)
        .await;
    let held_run = d["quarantined_run"]
        .as_str()
        .expect("still held")
        .to_owned();
    let r = second
        .call(
            Method::GET,
            &format!("/v1/domains/{domain}/sync-runs/{held_run}"),
            None,
        )
        .await;
    assert_eq!(r["held_removals_total"], 6, "{r}");
    // The next run sees them out already; it removes no one while they wait.
    let again = run_sync(&second, &domain).await.unwrap();
    assert_ne!(again["status"], "failed", "{again}");
    assert_eq!(
        leavers(&second, &domain).await,
        vec![("active".to_owned(), false); 6]
    );
    // The approval dies once on record, before its removals; the next process does them.
    let _ = second
        .http
        .post(format!(
            "{}/v1/domains/{domain}/sync-runs/{held_run}/approve",
            second.url
        ))
        .bearer_auth(&second.token)
        .send()
        .await;
    second.child.wait().unwrap();
    // On record: approved, not finished, so still listed for an admin to see.
    let replayed = idledger()
        .args(["replay", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(replayed.status.success());
    let state: serde_json::Value = serde_json::from_slice(&replayed.stdout).unwrap();
    let text = state.to_string();
    assert!(
        text.contains(&format!(r#""quarantined_runs":["{held_run}"]"#)),
        "the run is still listed"
    );
    let third = Serve::start(&data, None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    // The removals are made, then recorded as applied on the run: wait for both.
    let r = loop {
        let out = leavers(&third, &domain).await;
        let r = third
            .call(
                Method::GET,
                &format!("/v1/domains/{domain}/sync-runs/{held_run}"),
                None,
            )
            .await;
        if out == vec![("deactivated".to_owned(), false); 6] && r["removals_applied"] == true {
            break r;
        }
        assert!(Instant::now() < deadline, "{out:?} {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["status"], "failed", "closed at restart: {r}");
    assert_eq!(r["removals_applied"], true, "{r}");
    // Nothing is left to approve.
    let again = third
        .http
        .post(format!(
            "{}/v1/domains/{domain}/sync-runs/{held_run}/approve",
            third.url
        ))
        .bearer_auth(&third.token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::CONFLICT);
}

/// Registers the contoso domain on `serve`, reaching graphsim at `sim`, with `settings`
/// merged into the body; answers its id.
pub(crate) async fn contoso_domain(
    serve: &Serve,
    sim: &str,
    settings: serde_json::Value,
) -> String {
    let mut body = serde_json::json!({
        "domain": "contoso.onmicrosoft.com",
        "tenant_id": "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        "client_id": "11111111-2222-4333-8444-555555555555",
        "client_secret": "contoso-demo-secret",
        "graph_url": sim, "authority_url": sim,
    });
    if let (Some(b), Some(extra)) = (body.as_object_mut(), settings.as_object()) {
        b.extend(extra.clone());
    }
    let d = serve
        .call(reqwest::Method::POST, "/v1/domains", Some(body))
        .await;
    d["id"].as_str().unwrap().to_owned()
}

/// graphsim holding the contoso tenant, and an empty data dir for `serve` (in `dir`).
pub(crate) async fn contoso_and_data_dir(
) -> (String, graphsim::Sim, tempfile::TempDir, std::path::PathBuf) {
    let (sim, state) = graphsim::spawn(
        idledger::client::contoso::directory().unwrap(),
        graphsim::SimConfig::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    (sim, state, dir, data)
}
