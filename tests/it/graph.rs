//! The Graph client against a real graphsim on loopback.

use crate::support::{contoso, ext as user, idledger, APP, SYNC, TENANT};
use graphsim::state::Sim;
use graphsim::SimConfig;
use idledger::graph::{
    GraphClient, GraphError, GraphSettings, GraphTrust, RetryPolicy, Secret, UserChange,
    USER_SELECT,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const READONLY_APP: &str = "22222222-3333-4444-8555-666666666666";
const ROTATION: &str = "a1b2c3d4-0000-4000-8000-000000000002";

async fn sim(page_size: usize) -> (String, Sim) {
    graphsim::spawn(
        contoso(),
        SimConfig {
            page_size,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap()
}

fn client(url: &str, secret: &str) -> GraphClient {
    let settings = GraphSettings {
        authority_url: url.to_owned(),
        graph_url: url.to_owned(),
        tenant_id: TENANT.to_owned(),
        client_id: APP.to_owned(),
        client_secret: Secret::new(secret),
    };
    let retry = RetryPolicy {
        base_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    GraphClient::new(settings, retry, &GraphTrust::default()).unwrap()
}

async fn control(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("{url}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r
}

async fn requests_to(url: &str, path_part: &str) -> Vec<Value> {
    let all: Vec<Value> = reqwest::get(format!("{url}/_sim/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all.into_iter()
        .filter(|r| r["path"].as_str().unwrap_or("").contains(path_part))
        .collect()
}

/// The token endpoint throttles too: a 429 is waited out as it asks and retried.
#[tokio::test]
async fn a_throttled_token_request_is_retried_after_the_wait_it_names() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    fault(
        &url,
        json!({"status": 429, "retry_after": 0.05,
                    "path_prefix": format!("/{TENANT}/oauth2/v2.0/token"), "count": 1}),
    )
    .await;
    c.domains().await.unwrap();
    assert_eq!(requests_to(&url, "/oauth2/v2.0/token").await.len(), 2);
}

/// A wait too long to sit out within the call ends it, and the error keeps the wait for
/// the caller's next try (the sync scheduler's next run, a rotation's next attempt).
#[tokio::test]
async fn a_token_request_throttled_for_long_keeps_the_wait_it_names() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    fault(
        &url,
        json!({"status": 429, "retry_after": 3600,
                    "path_prefix": format!("/{TENANT}/oauth2/v2.0/token"), "count": 1}),
    )
    .await;
    let err = c.domains().await.unwrap_err();
    assert!(
        matches!(err, GraphError::Token { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(3600)),
        "{err:?}"
    );
}

#[tokio::test]
async fn tokens_are_cached_and_fetched_again_after_a_401() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    c.find_groups("Hideez Users Sync").await.unwrap();
    c.domains().await.unwrap();
    assert_eq!(
        requests_to(&url, "/oauth2/v2.0/token").await.len(),
        1,
        "one token for two calls"
    );
    // Graph says the token is no good: the client gets a new one once and retries.
    fault(
        &url,
        json!({"status": 401, "path_prefix": "/v1.0/domains", "count": 1}),
    )
    .await;
    c.domains().await.unwrap();
    assert_eq!(requests_to(&url, "/oauth2/v2.0/token").await.len(), 2);
    // Every Graph request carried a client-request-id and no request log holds a token.
    for r in requests_to(&url, "/v1.0/").await {
        assert!(
            r["headers"]["client-request-id"]
                .as_str()
                .is_some_and(|v| v.len() == 36),
            "{r}"
        );
        assert!(r["headers"].get("authorization").is_none());
    }
}

#[tokio::test]
async fn token_refusals_keep_their_aadsts_code() {
    let (url, _sim) = sim(100).await;
    let err = client(&url, "wrong-secret").domains().await.unwrap_err();
    assert!(
        matches!(
            err,
            GraphError::Token {
                status: 401,
                aadsts: 7000215,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code().as_deref(), Some("AADSTS7000215"));
    assert!(
        !format!("{err} {err:?}").contains("wrong-secret"),
        "the secret leaked into an error"
    );
}

/// What a round keeps in memory is bounded across its pages, not only per page: past the
/// limit the round fails with a clear error (in production ten million entries, here ten),
/// and each kind of round counts what it keeps.
#[tokio::test]
async fn a_round_that_brings_more_entries_than_the_limit_fails_clearly() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret")
        .with_page_size(4)
        .with_max_round_items(10);
    let refused = |e: GraphError| {
        let text = e.to_string();
        assert!(text.contains("more than 10 entries in one round"), "{text}");
    };
    refused(c.group_members(SYNC, USER_SELECT).await.unwrap_err());
    refused(c.groups_delta(&[SYNC.to_owned()], None).await.unwrap_err());
    refused(c.users_delta(USER_SELECT, None, None).await.unwrap_err());
    let roomy = client(&url, "contoso-demo-secret")
        .with_page_size(4)
        .with_max_round_items(31);
    assert_eq!(
        roomy.group_members(SYNC, USER_SELECT).await.unwrap().len(),
        30
    );
}

#[tokio::test]
async fn members_are_read_across_many_pages() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret").with_page_size(4);
    let members = c.group_members(SYNC, USER_SELECT).await.unwrap();
    assert_eq!(members.len(), 30);
    assert_eq!(
        members
            .iter()
            .map(|m| m.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        30
    );
    assert!(
        members.iter().any(|m| m.account_enabled == Some(false)),
        "the disabled user is a member"
    );
    assert!(
        requests_to(&url, &format!("/groups/{SYNC}/members"))
            .await
            .len()
            >= 8,
        "30 members at 4 a page"
    );
    let groups = c
        .find_groups("Hideez Key Auto Password Change")
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].id, ROTATION);
    assert!(c.find_groups("No Such Group").await.unwrap().is_empty());
}

#[tokio::test]
async fn delta_rounds_report_additions_removals_deletions_and_changes() {
    let (url, _sim) = sim(7).await;
    let c = client(&url, "contoso-demo-secret");
    let ids = vec![SYNC.to_owned(), ROTATION.to_owned()];
    let first = c.groups_delta(&ids, None).await.unwrap();
    assert_eq!(
        first.changes[SYNC].len(),
        30,
        "first round lists every member, over several pages"
    );
    assert_eq!(first.changes[ROTATION].len(), 11);
    assert!(first.changes.values().flatten().all(|m| !m.removed));
    let users_first = c.users_delta(USER_SELECT, None, None).await.unwrap();
    assert_eq!(users_first.changes.len(), 40);

    // An unchanged tenant gives an empty round.
    let same = c.groups_delta(&ids, Some(&first.delta_link)).await.unwrap();
    assert!(same.changes.values().all(|v| v.is_empty()), "{same:?}");

    // Join, leave, delete, change.
    control(
        &url,
        reqwest::Method::POST,
        &format!("/_sim/groups/{SYNC}/members/{}", user(31)),
        None,
    )
    .await;
    control(
        &url,
        reqwest::Method::DELETE,
        &format!("/_sim/groups/{SYNC}/members/{}", user(12)),
        None,
    )
    .await;
    control(
        &url,
        reqwest::Method::DELETE,
        &format!("/_sim/users/{}", user(3)),
        None,
    )
    .await;
    control(
        &url,
        reqwest::Method::PATCH,
        &format!("/_sim/users/{}", user(5)),
        Some(json!({"displayName": "Christie Cline-Smith"})),
    )
    .await;
    let second = c.groups_delta(&ids, Some(&same.delta_link)).await.unwrap();
    let sync: Vec<_> = second.changes[SYNC]
        .iter()
        .map(|m| (m.user_id.clone(), m.removed))
        .collect();
    assert!(sync.contains(&(user(31), false)), "{sync:?}");
    assert!(sync.contains(&(user(12), true)), "{sync:?}");
    assert!(
        sync.contains(&(user(3), true)),
        "a deleted user leaves the group: {sync:?}"
    );
    assert!(
        second.changes[ROTATION].contains(&idledger::graph::MemberChange {
            user_id: user(3),
            removed: true
        })
    );
    let users = c
        .users_delta(USER_SELECT, None, Some(&users_first.delta_link))
        .await
        .unwrap();
    assert!(
        users
            .changes
            .iter()
            .any(|u| matches!(u, UserChange::Removed { id, .. } if *id == user(3))),
        "{users:?}"
    );
    assert!(users.changes.iter().any(
        |u| matches!(u, UserChange::Upsert(g) if g.id == user(5) && g.display_name.as_deref() == Some("Christie Cline-Smith"))
    ));
}

#[tokio::test]
async fn an_expired_delta_token_asks_for_a_full_round() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    let ids = vec![SYNC.to_owned()];
    let first = c.groups_delta(&ids, None).await.unwrap();
    control(&url, reqwest::Method::POST, "/_sim/delta/expire", None).await;
    let err = c
        .groups_delta(&ids, Some(&first.delta_link))
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::DeltaExpired), "{err:?}");
    // The full round works again.
    assert_eq!(
        c.groups_delta(&ids, None).await.unwrap().changes[SYNC].len(),
        30
    );
}

#[tokio::test]
async fn a_429_storm_is_waited_out_as_asked() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    c.domains().await.unwrap();
    fault(
        &url,
        json!({"status": 429, "retry_after": 0.6, "path_prefix": "/v1.0/groups", "count": 3}),
    )
    .await;
    let started = Instant::now();
    let groups = c.find_groups("Hideez Users Sync").await.unwrap();
    let waited = started.elapsed();
    assert_eq!(groups.len(), 1);
    assert!(
        waited >= Duration::from_millis(1800),
        "three Retry-After: 0.6 waits, took {waited:?}"
    );
    assert_eq!(requests_to(&url, "/v1.0/groups").await.len(), 4);
}

#[tokio::test]
async fn a_503_storm_is_survived_and_a_longer_one_reported() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    fault(
        &url,
        json!({"status": 503, "path_prefix": "/v1.0/domains", "count": 4}),
    )
    .await;
    assert_eq!(c.domains().await.unwrap().len(), 1);
    fault(
        &url,
        json!({"status": 503, "path_prefix": "/v1.0/domains", "count": 50}),
    )
    .await;
    let err = c.domains().await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err:?}");
    assert_eq!(
        requests_to(&url, "/v1.0/domains").await.len(),
        5 + 6,
        "bounded attempts"
    );
    // A cut connection is retried too.
    control(&url, reqwest::Method::DELETE, "/_sim/faults", None).await;
    fault(
        &url,
        json!({"drop_connection": true, "path_prefix": "/v1.0/domains", "count": 1}),
    )
    .await;
    assert_eq!(c.domains().await.unwrap().len(), 1);
    // So is an answer cut off after its status and half its body: the network's fault,
    // not a bad answer of Graph's.
    let before = requests_to(&url, "/v1.0/domains").await.len();
    fault(
        &url,
        json!({"cut_after_headers": true, "path_prefix": "/v1.0/domains", "count": 1}),
    )
    .await;
    assert_eq!(c.domains().await.unwrap().len(), 1);
    assert_eq!(requests_to(&url, "/v1.0/domains").await.len(), before + 2);
    fault(
        &url,
        json!({"cut_after_headers": true, "path_prefix": "/v1.0/domains", "count": 50}),
    )
    .await;
    let err = c.domains().await.unwrap_err();
    assert!(
        matches!(err, idledger::graph::GraphError::Transport { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn password_updates_and_their_refusals() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    let good = Secret::new("Kx9#vQ2!mW7@pL4$");
    c.set_password(&user(2), &good).await.unwrap();
    let state: Value = reqwest::get(format!("{url}/_sim/users/{}/password", user(2)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state, json!({"password": "Kx9#vQ2!mW7@pL4$", "changes": 1}));

    let weak = c
        .set_password(&user(2), &Secret::new("short"))
        .await
        .unwrap_err();
    assert!(!weak.maybe_applied, "a plain refusal changed nothing");
    let weak = weak.error;
    assert_eq!(
        (weak.status(), weak.code().as_deref()),
        (Some(400), Some("Request_BadRequest"))
    );
    assert!(weak.is_definite());
    let admin = c.set_password(&user(1), &good).await.unwrap_err().error;
    assert_eq!(
        (admin.status(), admin.code().as_deref()),
        (Some(403), Some("Authorization_RequestDenied"))
    );
    // App-only, the permission alone resets nobody's password: the app's service
    // principal needs a directory role (User Administrator at least) too.
    control(
        &url,
        reqwest::Method::PATCH,
        &format!("/_sim/apps/{APP}"),
        Some(json!({"directoryRoles": []})),
    )
    .await;
    let roleless = c.set_password(&user(2), &good).await.unwrap_err().error;
    assert_eq!(
        (roleless.status(), roleless.code().as_deref()),
        (Some(403), Some("Authorization_RequestDenied"))
    );
    let missing = c
        .set_password("00000000-0000-4000-8000-000000000000", &good)
        .await
        .unwrap_err()
        .error;
    assert_eq!(
        (missing.status(), missing.code().as_deref()),
        (Some(404), Some("Request_ResourceNotFound"))
    );
    for e in [&weak, &admin, &missing] {
        assert!(
            !format!("{e} {e:?}").contains("Kx9#"),
            "a password leaked into an error"
        );
    }
    // None of the refusals was retried, and the password did not change.
    assert_eq!(
        requests_to(&url, &format!("/v1.0/users/{}", user(1)))
            .await
            .len(),
        1
    );
    let state: Value = reqwest::get(format!("{url}/_sim/users/{}/password", user(2)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["changes"], 1);
    // The read-only app may not set passwords.
    let mut ro = GraphSettings {
        authority_url: url.clone(),
        graph_url: url.clone(),
        tenant_id: TENANT.into(),
        client_id: READONLY_APP.into(),
        client_secret: Secret::new("contoso-readonly-secret"),
    };
    let denied = GraphClient::new(ro.clone(), RetryPolicy::default(), &GraphTrust::default())
        .unwrap()
        .set_password(&user(2), &good)
        .await
        .unwrap_err()
        .error;
    assert_eq!(denied.status(), Some(403));
    ro.client_secret = Secret::new("nope");
    assert!(matches!(
        GraphClient::new(ro, RetryPolicy::default(), &GraphTrust::default())
            .unwrap()
            .domains()
            .await,
        Err(GraphError::Token { .. })
    ));
}

/// Has graphsim answer as `f` says (`POST /_sim/faults`).
async fn fault(url: &str, f: Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/_sim/faults"))
        .json(&f)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{f}");
}

#[tokio::test]
async fn a_password_write_is_not_retried_once_it_may_have_been_applied() {
    let (url, sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    let pw = Secret::new("Kx9#vQ2!mW7@pL4$");
    let patch = json!({"method": "PATCH", "path_prefix": "/v1.0/users/", "count": 1});
    let patches = |u: u32| {
        let url = url.clone();
        async move {
            requests_to(&url, &format!("/v1.0/users/{}", user(u)))
                .await
                .len()
        }
    };
    // Graph acts, the answer is lost: unknown, and not retried behind the caller's back.
    let mut lost = patch.clone();
    lost["drop_after_apply"] = true.into();
    fault(&url, lost).await;
    let e = c.set_password(&user(2), &pw).await.unwrap_err();
    assert!(matches!(e.error, GraphError::Transport { .. }), "{e:?}");
    assert!(e.maybe_applied);
    assert_eq!(patches(2).await, 1);
    assert_eq!(
        sim.lock().dir.users[&user(2)].password.as_deref(),
        Some("Kx9#vQ2!mW7@pL4$")
    );
    // A 500 may have been applied too.
    let mut failed = patch.clone();
    failed["status"] = 500.into();
    fault(&url, failed).await;
    let e = c.set_password(&user(3), &pw).await.unwrap_err();
    assert_eq!((e.error.status(), e.maybe_applied), (Some(500), true));
    assert_eq!(patches(3).await, 1);
    // 429 and 503 are Graph's "not now": nothing was done, so the client retries.
    for status in [429, 503] {
        let mut busy = patch.clone();
        busy["status"] = status.into();
        busy["retry_after"] = 0.01.into();
        fault(&url, busy).await;
    }
    c.set_password(&user(4), &pw).await.unwrap();
    assert_eq!(patches(4).await, 3);
    // A 503, then a refusal: the first try may still have been applied, so the refusal
    // does not make the write certainly undone.
    let mut busy = patch.clone();
    busy["status"] = 503.into();
    busy["retry_after"] = 0.01.into();
    fault(&url, busy).await;
    let mut refused = patch.clone();
    refused["status"] = 403.into();
    fault(&url, refused).await;
    let e = c.set_password(&user(5), &pw).await.unwrap_err();
    assert_eq!((e.error.status(), e.maybe_applied), (Some(403), true));
    assert_eq!(patches(5).await, 2);
}

/// Graph said when to come back: a client that cannot wait that long gives up at once
/// (its caller retries on its own schedule), and `Retry-After: 0` is no licence to
/// retry at once.
#[tokio::test]
async fn retry_after_is_never_cut_short() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    c.domains().await.unwrap();
    let throttle = |after: f64| json!({"status": 429, "retry_after": after, "path_prefix": "/v1.0/groups", "count": 1});
    fault(&url, throttle(45.0)).await;
    let started = Instant::now();
    let e = c.find_groups("Hideez Users Sync").await.unwrap_err();
    assert_eq!(e.status(), Some(429), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(requests_to(&url, "/v1.0/groups").await.len(), 1);
    fault(&url, throttle(0.0)).await;
    let started = Instant::now();
    assert_eq!(c.find_groups("Hideez Users Sync").await.unwrap().len(), 1);
    // The client's base delay is 20 ms.
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert_eq!(requests_to(&url, "/v1.0/groups").await.len(), 3);
}

#[tokio::test]
async fn a_held_request_finishes_after_its_caller_hung_up_when_told_to() {
    let (url, sim) = sim(100).await;
    let settings = GraphSettings {
        authority_url: url.clone(),
        graph_url: url.clone(),
        tenant_id: TENANT.into(),
        client_id: APP.into(),
        client_secret: Secret::new("contoso-demo-secret"),
    };
    let impatient = GraphClient::new(
        settings,
        RetryPolicy {
            max_attempts: 1,
            request_timeout: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        &GraphTrust::default(),
    )
    .unwrap();
    impatient.domains().await.unwrap(); // a token first, so only the PATCH is held
    for (complete, user_n) in [(false, 4), (true, 5)] {
        fault(
            &url,
            json!({"method": "PATCH", "path_prefix": "/v1.0/users/", "delay_ms": 600,
                   "complete_after_disconnect": complete, "count": 1}),
        )
        .await;
        let e = impatient
            .set_password(&user(user_n), &Secret::new("Late#Landing2026!"))
            .await
            .unwrap_err();
        assert!(e.maybe_applied);
        tokio::time::sleep(Duration::from_millis(900)).await;
        let landed =
            sim.lock().dir.users[&user(user_n)].password.as_deref() == Some("Late#Landing2026!");
        assert_eq!(landed, complete, "complete_after_disconnect: {complete}");
    }
    let log: Vec<Value> = reqwest::get(format!("{url}/_sim/password-log?user={}", user(5)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
}

fn check(url: &str, client_id: &str, secret: &str) -> (Value, i32) {
    let out = idledger()
        .args([
            "graph",
            "check",
            "--tenant-id",
            TENANT,
            "--client-id",
            client_id,
            "--authority-url",
            url,
            "--graph-url",
            url,
        ])
        .env("IDLEDGER_CLIENT_SECRET", secret)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (report, out.status.code().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_check_reports_health_and_names_missing_permissions() {
    let (url, _sim) = sim(100).await;
    let u = url.clone();
    let (report, code) = tokio::task::spawn_blocking(move || check(&u, APP, "contoso-demo-secret"))
        .await
        .unwrap();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["token"], "ok");
    assert_eq!(report["sync_group"]["id"], SYNC);
    assert_eq!(report["sync_group"]["members"], 30);
    assert_eq!(report["rotation_group"]["members"], 11);
    assert!(report["seconds"].as_f64().is_some());
    assert!(
        report["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("User Administrator")),
        "{report}"
    );
    let u = url.clone();
    let (report, code) =
        tokio::task::spawn_blocking(move || check(&u, READONLY_APP, "contoso-readonly-secret"))
            .await
            .unwrap();
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        report["permissions"]["User-PasswordProfile.ReadWrite.All"],
        "missing"
    );
    assert_eq!(report["permissions"]["User.ReadWrite.All"], "missing");
    assert_eq!(report["permissions"]["User.Read.All"], "granted");
    assert_eq!(
        report["missing_permissions"],
        json!(["User.ReadWrite.All", "User-PasswordProfile.ReadWrite.All"])
    );
    let u = url.clone();
    let (report, code) = tokio::task::spawn_blocking(move || check(&u, APP, "bad"))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert_eq!(report["token"]["error"], "AADSTS7000215");
    // No secret at all is no secret Entra ID refused: nothing was checked.
    let out = idledger()
        .args(["graph", "check", "--tenant-id", TENANT, "--client-id", APP])
        .args(["--authority-url", &url, "--graph-url", &url])
        .env_remove("IDLEDGER_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("IDLEDGER_CLIENT_SECRET"), "{said}");
}

/// graphsim answers with the shapes GRAPH.md documents.
#[tokio::test]
async fn graphsim_speaks_graphs_shapes() {
    let (url, _sim) = sim(5).await;
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{url}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("client_id", APP),
            ("client_secret", "contoso-demo-secret"),
            ("scope", &format!("{url}/.default")),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert!(token["expires_in"].as_u64().unwrap() > 0 && token["ext_expires_in"].is_u64());
    let jwt = token["access_token"].as_str().unwrap();
    let claims = graphsim::jwt::peek(jwt).unwrap();
    assert_eq!(
        (
            claims.tid.as_str(),
            claims.appid.as_str(),
            claims.aud.as_str()
        ),
        (TENANT, APP, url.as_str())
    );
    assert!(
        claims
            .roles
            .contains(&"User-PasswordProfile.ReadWrite.All".to_owned())
            && claims.exp > claims.iat
    );
    let bad: Value = http
        .post(format!("{url}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("client_id", APP),
            ("client_secret", "x"),
            ("scope", "https://foo/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
    ] {
        assert!(bad.get(key).is_some(), "token error lacks {key}: {bad}");
    }
    let get = |path: String| {
        let http = http.clone();
        let jwt = jwt.to_owned();
        async move { http.get(path).bearer_auth(jwt).send().await.unwrap() }
    };
    let page: Value = get(format!("{url}/v1.0/groups/{SYNC}/members"))
        .await
        .json()
        .await
        .unwrap();
    assert!(page["@odata.context"].is_string() && page["@odata.nextLink"].is_string());
    assert_eq!(page["value"][0]["@odata.type"], "#microsoft.graph.user");
    let delta: Value = get(format!(
        "{url}/v1.0/groups/delta?$filter=id%20eq%20'{ROTATION}'&$select=members"
    ))
    .await
    .json()
    .await
    .unwrap();
    assert!(delta["@odata.nextLink"]
        .as_str()
        .unwrap()
        .contains("$skiptoken="));
    assert_eq!(
        delta["value"][0]["members@delta"][0]["@odata.type"],
        "#microsoft.graph.user"
    );
    let refused = get(format!("{url}/v1.0/groups/delta?$top=5")).await;
    assert_eq!(refused.status(), 400);
    let missing = get(format!("{url}/v1.0/users/nope")).await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get("request-id").is_some());
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
    assert!(
        body["error"]["innerError"]["request-id"].is_string()
            && body["error"]["innerError"]["date"].is_string()
    );
    let anonymous = http
        .get(format!("{url}/v1.0/domains"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let wk: Value = http
        .get(format!(
            "{url}/{TENANT}/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        wk["token_endpoint"],
        format!("{url}/{TENANT}/oauth2/v2.0/token")
    );
}

#[tokio::test]
async fn the_control_api_takes_graph_user_objects() {
    let (url, _sim) = sim(100).await;
    let created: Value = control(
        &url,
        reqwest::Method::POST,
        "/_sim/users",
        Some(json!({
            "@odata.type": "#microsoft.graph.user", "userPrincipalName": "new.hire@contoso.onmicrosoft.com",
            "displayName": "New Hire", "jobTitle": "Analyst", "password": "First-Key-2026!"
        })),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    control(
        &url,
        reqwest::Method::POST,
        &format!("/_sim/groups/{SYNC}/members/{id}"),
        None,
    )
    .await;
    let c = client(&url, "contoso-demo-secret");
    let members = c.group_members(SYNC, USER_SELECT).await.unwrap();
    assert!(members
        .iter()
        .any(|m| m.id == id && m.display_name.as_deref() == Some("New Hire")));
    let pw: Value = reqwest::get(format!("{url}/_sim/users/{id}/password"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pw, json!({"password": "First-Key-2026!", "changes": 0}));
}

/// A token endpoint that redirects elsewhere does not get the client secret carried
/// there: redirects are not followed.
#[tokio::test]
async fn the_token_request_follows_no_redirect() {
    use axum::routing::post;
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_url = format!("http://{}", evil.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = evil.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let redirect_to = format!("{evil_url}/steal");
    let app = axum::Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        post(move || {
            let to = redirect_to.clone();
            async move { axum::response::Redirect::temporary(&to) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client(&url, "contoso-demo-secret");
    let err = c.domains().await.unwrap_err();
    assert!(
        matches!(err, GraphError::Token { status: 307, .. }),
        "{err:?}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Graph's function-call form of delta (`delta()`), as generated SDKs send it, is the same
/// round; a path Graph does not serve answers Graph's error body.
#[tokio::test]
async fn delta_with_parentheses_and_unknown_paths_answer_as_graph_does() {
    let (url, _sim) = sim(100).await;
    let c = client(&url, "contoso-demo-secret");
    let token = c.access_token().await.unwrap();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let req = http.get(format!("{url}{path}")).bearer_auth(token.expose());
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let filter = format!("?$filter=id%20eq%20%27{SYNC}%27&$select=members");
    let (s1, plain) = get(format!("/v1.0/groups/delta{filter}")).await;
    let (s2, called) = get(format!("/v1.0/groups/delta(){filter}")).await;
    assert_eq!((s1, s2), (200, 200), "{called}");
    assert_eq!(plain["value"], called["value"]);
    let (s, users) = get("/v1.0/users/delta()?$select=id,displayName".into()).await;
    assert_eq!(s, 200, "{users}");
    assert!(!users["value"].as_array().unwrap().is_empty());
    let (s, err) = get("/v1.0/nothingHere/at/all".into()).await;
    assert_eq!(s, 400);
    assert_eq!(err["error"]["code"], "BadRequest");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nothingHere"));
    assert!(err["error"]["innerError"]["request-id"].is_string());
    // A method the path does not take: 405 with an error body, never an empty one.
    let r = http
        .delete(format!("{url}/v1.0/users/delta"))
        .bearer_auth(token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "Request_BadRequest", "{err}");
    assert!(err["error"]["innerError"]["request-id"].is_string());
    // A property the user type does not have is refused wherever users are selected,
    // as Graph does; the client's own selection passes.
    for path in [
        "/v1.0/users?$select=id,jobTitel".to_owned(),
        format!("/v1.0/users/{}?$select=displayName,mailbox", user(1)),
        format!("/v1.0/groups/{SYNC}/members?$select=id,nick"),
        "/v1.0/users/delta?$select=id,manager".to_owned(),
    ] {
        let (s, err) = get(path.clone()).await;
        assert_eq!(
            (s, &err["error"]["code"]),
            (400, &json!("Request_BadRequest")),
            "{path}: {err}"
        );
        assert!(err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Could not find a property"));
    }
    let select = idledger::graph::USER_SELECT;
    let (s, users) = get(format!("/v1.0/users/delta?$select={select}")).await;
    assert_eq!(s, 200, "{users}");
    // Names in any case, answered in Graph's own.
    let (s, one) = get(format!("/v1.0/users/{}?$select=DISPLAYNAME", user(1))).await;
    assert_eq!(s, 200, "{one}");
    assert!(one["displayName"].is_string(), "{one}");
}

/// graphsim, as Graph, takes only tokens issued for itself: one asked for another resource
/// (`scope` of another service root) is refused with Graph's 401, and one for its own root
/// is taken.
#[tokio::test]
async fn a_token_for_another_resource_is_refused() {
    let (url, _sim) = sim(100).await;
    let http = reqwest::Client::new();
    let token_for = async |scope: &str| {
        let answer: Value = http
            .post(format!("{url}/{TENANT}/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", "contoso-demo-secret"),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    };
    let users = async |token: &str| {
        let r = http
            .get(format!("{url}/v1.0/users?$select=id"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let elsewhere = token_for("https://graph.microsoft.com/.default").await;
    let (status, err) = users(&elsewhere).await;
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["code"], "InvalidAuthenticationToken", "{err}");
    let own = token_for(&format!("{url}/.default")).await;
    let (status, body) = users(&own).await;
    assert_eq!(status, 200, "{body}");
}
