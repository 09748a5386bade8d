//! A seeded fault campaign against rotation: nine users with keys, clients asking for
//! rotations, random Graph faults on the password PATCH and the token endpoint (requests
//! held and finished after the caller hung up, answers lost after Graph acted, 5xx, 429,
//! cut connections, definite refusals), and `serve` SIGKILLed and restarted on the same
//! data dir. The check runs over the whole run: at every moment when no rotation of a
//! user is in flight, Entra ID (graphsim) must hold the engine's current password or the
//! unconfirmed candidate that reveal names.
//!
//! `IDLEDGER_CAMPAIGN_SEED` replays a run; `IDLEDGER_CAMPAIGN_SECS` (default 40) sets its
//! length; `IDLEDGER_CAMPAIGN_BIN` runs another `idledger` binary as the server. The seed
//! is printed on failure.

use crate::support::*;
use chrono::{DateTime, Utc};
use idledger::client::{contoso, ServeProcess};
use idledger::secrets::{Keyring, MasterKey};
use idledger::store::SledEventLog;
use idledger_domain::{Event, RotationId, StreamId, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// Graph's request timeout in the campaign: holds of up to 4 s outlive it.
const GRAPH_TIMEOUT_SECS: &str = "1.5";
/// The uncertainty window: longer than any hold the campaign injects.
const UNCERTAINTY_SECS: &str = "6";

struct Campaign {
    seed: u64,
    secs: u64,
}

impl Campaign {
    fn from_env() -> Campaign {
        let seed = std::env::var("IDLEDGER_CAMPAIGN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::thread_rng().gen());
        let secs = std::env::var("IDLEDGER_CAMPAIGN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        Campaign { seed, secs }
    }
}

/// The serve process of the moment (replaced after every kill) and its log file.
struct Server {
    program: PathBuf,
    data: PathBuf,
    log: PathBuf,
    current: RwLock<Option<ServeProcess>>,
}

impl Server {
    fn env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("IDLEDGER_ROTATION_CHECK_SECS", "1"),
            ("IDLEDGER_ROTATION_RETRY_SECS", "0.2"),
            ("IDLEDGER_GRAPH_TIMEOUT_SECS", GRAPH_TIMEOUT_SECS),
            ("IDLEDGER_ROTATION_UNCERTAINTY_SECS", UNCERTAINTY_SECS),
            ("IDLEDGER_LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ]
    }

    async fn start(&self) {
        let serve =
            ServeProcess::start_program(&self.program, &self.data, &Self::env(), Some(&self.log))
                .await
                .expect("serve starts");
        *self.current.write().await = Some(serve);
    }

    async fn url_and_token(&self) -> Option<(String, String)> {
        let guard = self.current.read().await;
        guard
            .as_ref()
            .map(|s| (s.api.url.clone(), s.api.token.clone()))
    }

    async fn kill(&self) {
        if let Some(s) = self.current.write().await.take() {
            s.kill();
        }
    }
}

async fn call(server: &Server, method: Method, path: &str, body: Option<Value>) -> Value {
    let (url, token) = server.url_and_token().await.expect("serve is running");
    let mut req = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// One random fault on the password PATCH or the token endpoint.
fn random_fault(rng: &mut StdRng, tenant: &str) -> Value {
    let patch = json!({"method": "PATCH", "path_prefix": "/v1.0/users/"});
    let token = json!({"method": "POST", "path_prefix": format!("/{tenant}/oauth2/v2.0/token")});
    let mut f = if rng.gen_bool(0.8) { patch } else { token };
    let held = rng.gen_range(500..4000);
    match rng.gen_range(0..10) {
        // Held, then finished after the caller gave up (a late landing).
        0..=2 => {
            f["delay_ms"] = held.into();
            f["complete_after_disconnect"] = true.into();
        }
        // Held and answered, if the caller is still there.
        3 => f["delay_ms"] = held.into(),
        // Graph acted; the answer is lost.
        4 => f["drop_after_apply"] = true.into(),
        // Cut before Graph acted.
        5 => f["drop_connection"] = true.into(),
        // Any 5xx: the client retries a 503 it was told to and takes any other as an
        // outcome it cannot know.
        6 => {
            f["status"] = [500, 502, 503, 504][rng.gen_range(0..4)].into();
            if rng.gen_bool(0.5) {
                f["retry_after"] = 0.2.into();
            }
        }
        7 => {
            f["status"] = 429.into();
            f["retry_after"] = 0.1.into();
        }
        // Definite refusals.
        8 => f["status"] = 403.into(),
        _ => f["status"] = if rng.gen_bool(0.5) { 400 } else { 401 }.into(),
    }
    f["count"] = rng.gen_range(1..3).into();
    f
}

/// What the engine holds for one user at one moment, folded from its stream.
#[derive(Clone, Default)]
struct EngineView {
    current: Option<String>,
    candidate: Option<String>,
    in_flight: Option<RotationId>,
}

/// A short fingerprint of a password, for messages (never the password).
fn fp(p: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(p.as_bytes())[..3])
}

impl std::fmt::Debug for EngineView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "current {:?}, candidate {:?}, in flight {}",
            self.current.as_deref().map(fp),
            self.candidate.as_deref().map(fp),
            self.in_flight.is_some()
        )
    }
}

/// A password in force in Entra ID, or an event that changed the engine's view, at a time.
enum Moment {
    Entra(String),
    Engine(&'static str, EngineView),
}

/// Sweeps the merged timeline of one user; returns each lockout window found (when it
/// began and how long it lasted), with the timeline up to it.
fn lockouts(initial: &str, mut moments: Vec<(DateTime<Utc>, u8, Moment)>) -> Vec<String> {
    moments.sort_by_key(|(t, order, _)| (*t, *order));
    let mut entra = initial.to_owned();
    let mut engine = EngineView::default();
    let mut windows = Vec::new();
    let mut began: Option<DateTime<Utc>> = None;
    let mut story: Vec<String> = Vec::new();
    for (t, _, m) in moments {
        match m {
            Moment::Entra(p) => {
                story.push(format!("  {t} Entra set {}", fp(&p)));
                entra = p;
            }
            Moment::Engine(kind, v) => {
                story.push(format!("  {t} {kind}: {v:?}"));
                engine = v;
            }
        }
        let held = engine.current.as_deref().unwrap_or(initial) == entra
            || engine.candidate.as_deref() == Some(entra.as_str());
        let bad = engine.in_flight.is_none() && !held;
        match (bad, began) {
            (true, None) => began = Some(t),
            (false, Some(b)) => {
                windows.push(format!(
                    "from {b} for {} ms; the story:\n{}",
                    (t - b).num_milliseconds(),
                    story.join("\n")
                ));
                began = None;
            }
            _ => {}
        }
    }
    if let Some(b) = began {
        windows.push(format!(
            "from {b} to the end of the run; the story:\n{}",
            story.join("\n")
        ));
    }
    windows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_fault_campaign_never_locks_anyone_out() {
    let campaign = Campaign::from_env();
    eprintln!(
        "rotation fault campaign: IDLEDGER_CAMPAIGN_SEED={} IDLEDGER_CAMPAIGN_SECS={}",
        campaign.seed, campaign.secs
    );
    let result = tokio::spawn(run_campaign(campaign.seed, campaign.secs)).await;
    if let Err(e) = result {
        panic!(
            "the campaign failed; replay with IDLEDGER_CAMPAIGN_SEED={} IDLEDGER_CAMPAIGN_SECS={}: {e}",
            campaign.seed, campaign.secs
        );
    }
}

async fn run_campaign(seed: u64, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tenant = contoso::directory().unwrap();
    let config = graphsim::SimConfig {
        // Short-lived tokens, so the token endpoint (and its faults) is asked often.
        access_token_ttl: Duration::from_secs(4),
        ..graphsim::SimConfig::default()
    };
    let (sim_url, sim) = graphsim::spawn(tenant, config).await.unwrap();
    let server = Arc::new(Server {
        // Another build's binary can be put to the same campaign (e.g. an older one).
        program: std::env::var_os("IDLEDGER_CAMPAIGN_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_idledger")),
            PathBuf::from,
        ),
        data: data.clone(),
        log: dir.path().join("serve.log"),
        current: RwLock::new(None),
    });
    server.start().await;

    // Setup: the contoso domain, a sync, keys for the nine rotation-group members who can
    // be rotated (user 01 is a Global Administrator: Graph refuses her).
    let domain = {
        let guard = server.current.read().await;
        let api = &guard.as_ref().unwrap().api;
        api.add_contoso(&sim_url, json!({"auto_import": true, "auto_password_change_days": 1, "max_concurrent_rotations": 4}))
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    {
        let guard = server.current.read().await;
        let run = guard
            .as_ref()
            .unwrap()
            .api
            .sync_and_wait(&domain, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let users = call(
        &server,
        Method::GET,
        &format!("/v1/users?domain={domain}&limit=1000"),
        None,
    )
    .await;
    let mut targets: Vec<(String, String)> = Vec::new(); // (user id, external id)
    for n in 2..=10 {
        let external = format!("c0a80000-0000-4000-8000-{n:012}");
        let u = users["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["external_id"] == external.as_str())
            .unwrap_or_else(|| panic!("user {external} was not imported"));
        let id = u["id"].as_str().unwrap().to_owned();
        call(
            &server,
            Method::PUT,
            &format!("/v1/users/{id}/key"),
            Some(json!({"key_id": format!("K-{n:02}")})),
        )
        .await;
        targets.push((id, external));
    }
    let initial: HashMap<String, String> = {
        let inner = sim.lock();
        targets
            .iter()
            .map(|(_, ext)| (ext.clone(), inner.dir.users[ext].password.clone().unwrap()))
            .collect()
    };

    // The campaign.
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (server, targets) = (server.clone(), targets.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c));
            let http = reqwest::Client::new();
            while Instant::now() < until {
                let (user, _) = &targets[rng.gen_range(0..targets.len())];
                if let Some((url, token)) = server.url_and_token().await {
                    let _ = http
                        .post(format!("{url}/v1/users/{user}/rotate"))
                        .bearer_auth(token)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
            }
        }));
    }
    {
        let sim_url = sim_url.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(100));
            let http = reqwest::Client::new();
            while Instant::now() < until {
                let fault = random_fault(&mut rng, contoso::TENANT);
                http.post(format!("{sim_url}/_sim/faults"))
                    .json(&fault)
                    .send()
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
            }
        }));
    }
    {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(200));
            loop {
                let wait = Duration::from_millis(rng.gen_range(2000..8000));
                if Instant::now() + wait >= until {
                    break;
                }
                tokio::time::sleep(wait).await;
                server.kill().await;
                server.start().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Calm: no more faults; the engine settles every rotation it can.
    reqwest::Client::new()
        .delete(format!("{sim_url}/_sim/faults"))
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut settled = true;
        for (user, _) in &targets {
            let h = call(
                &server,
                Method::GET,
                &format!("/v1/users/{user}/password-history"),
                None,
            )
            .await;
            if h["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["outcome"] == "pending")
            {
                settled = false;
            }
        }
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotations stayed in flight after the faults stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything still held by graphsim lands within the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.kill().await;

    // The check, over the whole run.
    let log: Vec<Value> = reqwest::get(format!("{sim_url}/_sim/password-log"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "the chain does not verify: {report}");
    let problems = check_history(&data, &targets, &initial, &log);
    assert_no_plaintext(dir.path(), &log);
    assert!(
        problems.is_empty(),
        "{} lockout window(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The lockout windows of every target user, from graphsim's password log and the
/// engine's log (its sealed passwords opened with the master key).
fn check_history(
    data: &Path,
    targets: &[(String, String)],
    initial: &HashMap<String, String>,
    graph_log: &[Value],
) -> Vec<String> {
    let store = SledEventLog::open(data).unwrap();
    let (master, _) = MasterKey::load(data, None, true).unwrap();
    let keys = idledger::secrets::keystore::KeyFile::open(data).unwrap();
    let keyring = Keyring::open(master, std::sync::Arc::new(keys)).unwrap();
    let mut problems = Vec::new();
    for (user, external) in targets {
        let user_id = UserId(user.parse().unwrap());
        let stream = StreamId::user(user_id);
        let mut moments: Vec<(DateTime<Utc>, u8, Moment)> = Vec::new();
        let mut passwords: BTreeMap<RotationId, String> = BTreeMap::new();
        let mut view = EngineView::default();
        for env in idledger::store::envelopes(&*store, 1) {
            let env = env.unwrap();
            if env.stream != stream {
                continue;
            }
            let kind = env.event.kind();
            match &env.event {
                Event::RotationInterrupted(_) | Event::RotationRetried(_) => {}
                Event::RotationStarted(e) => {
                    let pw = keyring.unseal(&stream, &e.sealed_password).unwrap();
                    passwords.insert(e.rotation_id, pw.expose().to_owned());
                    view.in_flight = Some(e.rotation_id);
                }
                Event::RotationSucceeded(e) => {
                    view.current = passwords.get(&e.rotation_id).cloned();
                    view.candidate = None;
                    if view.in_flight == Some(e.rotation_id) {
                        view.in_flight = None;
                    }
                }
                Event::RotationFailed(e) => {
                    if e.retryable {
                        view.candidate = passwords.get(&e.rotation_id).cloned();
                    }
                    if view.in_flight == Some(e.rotation_id) {
                        view.in_flight = None;
                    }
                }
                _ => continue,
            }
            moments.push((env.recorded_at, 1, Moment::Engine(kind, view.clone())));
        }
        // A group of appends is stamped when it opens, so a success that joined a group a
        // few microseconds after graphsim applied its password (which caused it) may carry
        // an earlier stamp than graphsim's record of that password. Causality decides: a
        // password set just after a success that made it current was set before it.
        for p in graph_log.iter().filter(|p| p["user"] == external.as_str()) {
            let mut t: DateTime<Utc> = p["time"].as_str().unwrap().parse().unwrap();
            let pw = p["password"].as_str().unwrap().to_owned();
            let caused = moments.iter().find(|(at, _, m)| {
                matches!(m, Moment::Engine("RotationSucceeded", v) if v.current.as_deref() == Some(pw.as_str()))
                    && *at <= t
                    && t - *at < chrono::Duration::milliseconds(20)
            });
            if let Some((at, _, _)) = caused {
                t = *at;
            }
            moments.push((t, 0, Moment::Entra(pw)));
        }
        for w in lockouts(&initial[external], moments) {
            problems.push(format!("user {user} ({external}): {w}"));
        }
    }
    problems
}

/// No password Graph ever held appears in any file the run left behind (data dir, logs).
fn assert_no_plaintext(root: &Path, graph_log: &[Value]) {
    let mut by_len: BTreeMap<usize, std::collections::HashSet<&[u8]>> = BTreeMap::new();
    for p in graph_log.iter().filter_map(|p| p["password"].as_str()) {
        by_len.entry(p.len()).or_default().insert(p.as_bytes());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for (len, set) in &by_len {
                assert!(
                    !bytes.windows(*len).any(|w| set.contains(w)),
                    "a password in plaintext in {}",
                    path.display()
                );
            }
        }
    }
}
