//! Password rotation and key writes: the real server and graphsim on loopback, over HTTP.

use crate::support::{ext, world, World, APP};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

impl World {
    /// The engine's id of contoso user `n`.
    pub(crate) async fn id(&self, n: u32) -> String {
        self.user(n).await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn assign_key(&self, n: u32, key: &str) -> String {
        let id = self.id(n).await;
        let (s, body) = self.put_key(&id, key).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        id
    }

    /// The writes `agent` is handed now.
    pub(crate) async fn agent_writes(&self, agent: &str) -> Vec<Value> {
        let (s, writes) = self
            .app
            .call(Some(agent), Method::GET, "/v1/agent/key-writes", None)
            .await;
        assert_eq!(s, StatusCode::OK, "{writes}");
        writes["items"].as_array().unwrap().clone()
    }

    /// `agent`'s answer `written` to its delivery of `write`.
    pub(crate) async fn ack_written(&self, agent: &str, write: &Value) -> (StatusCode, Value) {
        let path = format!("/v1/agent/key-writes/{}/ack", write["id"].as_str().unwrap());
        let written = json!({"result": "written", "delivery": write["delivery"]});
        self.app
            .call(Some(agent), Method::POST, &path, Some(written))
            .await
    }

    pub(crate) async fn history(&self, id: &str) -> Vec<Value> {
        let (s, body) = self
            .admin(
                Method::GET,
                &format!("/v1/users/{id}/password-history"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    /// Waits until the user has `n` rotations and none is pending; returns the history.
    pub(crate) async fn rotations_settled(&self, id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let h = self.history(id).await;
            if h.len() >= n && h.iter().all(|r| r["outcome"] != "pending") {
                return h;
            }
            assert!(Instant::now() < deadline, "rotations of {id}: {h:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) async fn rotate(&self, id: &str) -> String {
        let (s, body) = self
            .admin(Method::POST, &format!("/v1/users/{id}/rotate"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        body["rotation_id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn reveal(&self, id: &str) -> Value {
        let (s, body) = self.reveal_answer(id).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body
    }

    /// The answer to an admin's reveal of the user's password.
    pub(crate) async fn reveal_answer(&self, id: &str) -> (StatusCode, Value) {
        let path = format!("/v1/users/{id}/password/reveal");
        self.admin(Method::POST, &path, Some(json!({"reason": "test"})))
            .await
    }

    pub(crate) async fn sim_password(&self, n: u32) -> String {
        self.sim_password_of(&ext(n)).await
    }

    /// The password graphsim holds for the user with Entra object id `external`.
    pub(crate) async fn sim_password_of(&self, external: &str) -> String {
        let v: Value = self
            .sim_http
            .get(format!("{}/_sim/users/{external}/password", self.sim))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["password"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn kinds(&self, id: &str) -> Vec<String> {
        self.events(id)
            .await
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The user's events as the API shows them (the first thousand).
    pub(crate) async fn events(&self, id: &str) -> Vec<Value> {
        let (_, events) = self
            .admin(
                Method::GET,
                &format!("/v1/users/{id}/events?limit=1000"),
                None,
            )
            .await;
        events["items"].as_array().unwrap().clone()
    }

    /// How often the user's key writes were handed to an agent.
    async fn deliveries(&self, id: &str) -> usize {
        let kinds = self.kinds(id).await;
        kinds.iter().filter(|k| *k == "KeyWriteDelivered").count()
    }
}

pub(crate) async fn rotating_world(extra: Value) -> World {
    let mut settings = json!({"auto_import": true});
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let w = world(settings).await;
    w.sync().await;
    w
}

#[tokio::test]
async fn a_scheduled_rotation_sets_in_graph_exactly_the_password_the_agent_receives() {
    let w = rotating_world(json!({"auto_password_change_days": 30})).await;
    let id = w.assign_key(2, "K-0002").await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");
    assert_eq!(h[0]["reason"], "initial");
    assert_eq!(h[0]["key_write_state"], "queued");
    assert!(
        !h[0].to_string().contains("password\":"),
        "no password in history"
    );

    let agent = w.app.token("agent", &["K-0002"]).await;
    let other = w.app.token("agent", &["K-9999"]).await;
    // Acknowledged before any agent fetched it: refused, nothing recorded (no key can
    // hold a password no agent was given).
    let head = w.head().await;
    let queued = h[0]["key_write_id"].as_str().unwrap();
    let (s, body) = w
        .app
        .call(
            Some(&agent),
            Method::POST,
            &format!("/v1/agent/key-writes/{queued}/ack"),
            Some(json!({"result": "written"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fetch it first"),
        "{body}"
    );
    assert_eq!(w.head().await, head);
    let (s, none) = w
        .app
        .call(Some(&other), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(none["items"].as_array().unwrap().is_empty(), "{none}");
    let (s, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{writes}");
    let write = &writes["items"][0];
    assert_eq!(writes["items"].as_array().unwrap().len(), 1);
    assert_eq!(write["key_id"], "K-0002");
    assert_eq!(write["rotation_id"], h[0]["rotation_id"]);
    assert_eq!(write["password"].as_str().unwrap(), w.sim_password(2).await);
    assert_eq!(
        write["user_principal_name"],
        w.user(2).await.unwrap()["user_principal_name"]
    );

    // Another agent can neither see nor acknowledge it; an admin cannot fetch writes.
    let write_id = write["id"].as_str().unwrap();
    let ack = |result: &str| Some(json!({"result": result, "detail": ""}));
    let (s, _) = w
        .app
        .call(
            Some(&other),
            Method::POST,
            &format!("/v1/agent/key-writes/{write_id}/ack"),
            ack("written"),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = w.admin(Method::GET, "/v1/agent/key-writes", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = w
        .app
        .call(
            Some(&agent),
            Method::POST,
            &format!("/v1/agent/key-writes/{write_id}/ack"),
            ack("written"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let h = w.history(&id).await;
    assert_eq!(h[0]["key_write_state"], "confirmed");
    let kinds = w.kinds(&id).await;
    for k in [
        "RotationStarted",
        "RotationSucceeded",
        "KeyWriteQueued",
        "KeyWriteDelivered",
        "KeyWriteConfirmed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    let (s, _) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert_eq!(s, StatusCode::OK);

    // The preview shows the next rotation 30 days on.
    let (s, up) = w
        .admin(Method::GET, "/v1/rotations/upcoming?within_days=31", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{up}");
    let mine: Vec<&Value> = up["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["user_id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{up}");
    assert_eq!(mine[0]["reason"], "scheduled");
    // The user says the same, alone and in the list.
    let (_, user) = w.admin(Method::GET, &format!("/v1/users/{id}"), None).await;
    assert_eq!(user["next_rotation_at"], mine[0]["due_at"], "{user}");
    let (_, list) = w.admin(Method::GET, "/v1/users?limit=1000", None).await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["next_rotation_at"], mine[0]["due_at"]);
    let (_, up) = w
        .admin(Method::GET, "/v1/rotations/upcoming?within_days=29", None)
        .await;
    assert!(!up.to_string().contains(&id));
}

/// The schedule pages by place (due time, then user), not by count: a user listed on an
/// earlier page who leaves the schedule does not make the next page skip anyone, every
/// user due throughout is listed once, and a cursor this route did not give is a 400.
#[tokio::test]
async fn the_upcoming_schedule_pages_by_place_not_by_count() {
    let w = rotating_world(json!({"auto_password_change_days": 30})).await;
    let mut ids = Vec::new();
    for n in [2, 3, 4, 5] {
        let id = w.assign_key(n, &format!("K-{n:04}")).await;
        w.rotations_settled(&id, 1).await;
        ids.push(id);
    }
    let page = |after: Option<String>| {
        let url = match after {
            None => "/v1/rotations/upcoming?within_days=31&limit=1".to_owned(),
            Some(a) => format!("/v1/rotations/upcoming?within_days=31&limit=1&after={a}"),
        };
        let w = &w;
        async move {
            let (s, body) = w.admin(Method::GET, &url, None).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            let users: Vec<String> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["user_id"].as_str().unwrap().to_owned())
                .collect();
            (users, body["next"].as_str().map(str::to_owned))
        }
    };
    let (first, mut next) = page(None).await;
    assert_eq!(first.len(), 1);
    // The first user listed leaves the schedule (its key taken away) before page two.
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/users/{}/key", first[0]), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let mut listed = first.clone();
    while let Some(after) = next.take() {
        let (users, more) = page(Some(after)).await;
        listed.extend(users);
        next = more;
    }
    let mut expected = ids.clone();
    expected.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, expected, "each once, none skipped: {listed:?}");
    for bad in ["5", "x.y.z", "1.2.3.4", &format!("0.0.{}", ids[0])] {
        let (s, body) = w
            .admin(
                Method::GET,
                &format!("/v1/rotations/upcoming?after={bad}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_503_storm_is_retried_with_the_same_password() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(3, "K-0003").await;
    // More 503s than the client's own attempts: the rotation records a retry.
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 503, "retry_after": 0.01, "count": 8})),
    )
    .await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");
    assert!(h[0]["retries"].as_u64().unwrap() >= 1, "{h:?}");
    assert!(w.kinds(&id).await.iter().any(|k| k == "RotationRetried"));
    // One sealed password per rotation: what Graph holds is what the engine holds.
    assert_eq!(
        w.reveal(&id).await["password"].as_str().unwrap(),
        w.sim_password(3).await
    );
}

/// One 503, then the client's own retry sets the password: the 503'd PATCH may still be
/// applied, so a rotation asked for at once waits out the uncertainty window rather than
/// set a newer password that PATCH could overwrite.
#[tokio::test]
async fn a_503_before_a_success_holds_back_the_next_rotation() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(5, "K-0005").await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 503, "retry_after": 0.01, "count": 1})),
    )
    .await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");
    assert_eq!(h[0]["retries"], 1, "{h:?}");
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{id}/rotate"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert!(body["rotation_id"].is_null(), "not started now: {body}");
    assert!(body["deferred_until"].is_string(), "{body}");
}

/// Throttling past the client's own retries is Graph's "not now", not an unknown outcome:
/// the same password goes again after the wait Graph asked for, nothing is recorded as
/// uncertain, and a new rotation may follow at once (no uncertainty window).
#[tokio::test]
async fn throttling_past_the_clients_retries_waits_and_opens_no_uncertainty() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(2, "K-0002").await;
    // Six 429s: every try of the Graph client's first call.
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(
            json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 429,
                    "retry_after": 0.1, "count": 6}),
        ),
    )
    .await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");
    assert_eq!(h[0]["retries"], 0, "{h:?}");
    let kinds = w.kinds(&id).await;
    assert!(!kinds.iter().any(|k| k == "RotationRetried"), "{kinds:?}");
    assert_eq!(
        w.reveal(&id).await["password"].as_str().unwrap(),
        w.sim_password(2).await
    );
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{id}/rotate"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert!(body["rotation_id"].is_string(), "deferred: {body}");

    // Throttled for longer than a drive's attempts: no refusal (nothing is wrong with the
    // user or the password), the rotation waits, and goes through once Graph lets it.
    w.rotations_settled(&id, 2).await;
    let before = w.sim_password(2).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(
            json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 429,
                    "retry_after": 0.05, "count": 1000}),
        ),
    )
    .await;
    w.rotate(&id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = w.history(&id).await;
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[2]["outcome"], "pending", "{h:?}");
    assert_eq!(w.sim_password(2).await, before);
    let kinds = w.kinds(&id).await;
    assert!(
        !kinds
            .iter()
            .any(|k| k == "RotationRetried" || k == "RotationFailed"),
        "nothing recorded for a throttle: {kinds:?}"
    );
    w.sim(Method::DELETE, "/_sim/faults", None).await;
    let h = w.rotations_settled(&id, 3).await;
    assert_eq!(h[2]["outcome"], "succeeded", "{h:?}");
    assert_ne!(w.sim_password(2).await, before);
}

#[tokio::test]
async fn refusals_are_not_retried_and_keep_the_previous_password() {
    let w = rotating_world(json!({})).await;
    // User 1 is a Global Administrator: Graph answers 403 to the app.
    let admin_user = w.assign_key(1, "K-0001").await;
    let before = w.sim_password(1).await;
    w.rotate(&admin_user).await;
    let h = w.rotations_settled(&admin_user, 1).await;
    assert_eq!(h[0]["outcome"], "failed", "{h:?}");
    assert_eq!(h[0]["graph_code"], "Authorization_RequestDenied");
    assert_eq!(h[0]["retries"], 0);
    assert_eq!(w.sim_password(1).await, before);
    let (s, _) = w.reveal_answer(&admin_user).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "no password is known to the engine"
    );

    // A complexity refusal: the first rotation's password stays current.
    let id = w.assign_key(4, "K-0004").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let first = w.reveal(&id).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 400, "count": 1})),
    )
    .await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 2).await;
    assert_eq!(h[1]["outcome"], "failed", "{h:?}");
    assert_eq!(h[1]["graph_code"], "Request_BadRequest");
    assert_eq!(h[1]["retries"], 0);
    let now = w.reveal(&id).await;
    assert_eq!(now["rotation_id"], first["rotation_id"]);
    assert_eq!(now["password"], first["password"]);
    assert_eq!(now["password"].as_str().unwrap(), w.sim_password(4).await);

    // Everyone's rotations, the last started first; Graph's refusals alone with their code.
    let (s, recent) = w.admin(Method::GET, "/v1/rotations/recent", None).await;
    assert_eq!(s, StatusCode::OK, "{recent}");
    let seen: Vec<(&str, &str)> = recent["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap(),
                r["rotation"]["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (id.as_str(), "failed"),
            (id.as_str(), "succeeded"),
            (admin_user.as_str(), "failed")
        ],
        "{recent}"
    );
    assert!(!recent
        .to_string()
        .contains(first["password"].as_str().unwrap()));
    let (_, refused) = w
        .admin(
            Method::GET,
            "/v1/rotations/recent?outcome=failed&limit=1",
            None,
        )
        .await;
    assert_eq!(
        refused["items"][0]["rotation"]["graph_code"],
        "Request_BadRequest"
    );
    let next = refused["next"].as_str().unwrap();
    let (_, rest) = w
        .admin(
            Method::GET,
            &format!("/v1/rotations/recent?outcome=failed&limit=1&after={next}"),
            None,
        )
        .await;
    assert_eq!(rest["items"][0]["user_id"], admin_user.as_str(), "{rest}");
    assert_eq!(
        rest["items"][0]["rotation"]["graph_code"],
        "Authorization_RequestDenied"
    );
    assert!(rest["next"].is_null(), "{rest}");
    for bad in [
        "outcome=lost".to_owned(),
        format!("after={}", uuid::Uuid::now_v7()),
        "domain_id=nope".to_owned(),
    ] {
        let (s, body) = w
            .admin(Method::GET, &format!("/v1/rotations/recent?{bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_revoked_app_secret_fails_the_rotation_with_the_token_error() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(5, "K-0005").await;
    w.sim(
        Method::PATCH,
        &format!("/_sim/apps/{APP}"),
        Some(json!({"secret": "rotated-elsewhere"})),
    )
    .await;
    // The cached access token is refused once: the client asks for a new one, and the
    // old secret no longer gets it.
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 401, "count": 1})),
    )
    .await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "failed", "{h:?}");
    assert_eq!(h[0]["graph_code"], "AADSTS7000215", "{h:?}");
    assert!(!h[0].to_string().contains("contoso-demo-secret"));
}

#[tokio::test]
async fn leaving_the_rotation_group_or_losing_credentials_stops_rotations() {
    let w =
        rotating_world(json!({"auto_password_change_days": 30, "rotate_after_reveal_hours": 0}))
            .await;
    let stays = w.assign_key(6, "K-0006").await;
    let leaves = w.assign_key(7, "K-0007").await;
    w.rotations_settled(&stays, 1).await;
    w.rotations_settled(&leaves, 1).await;
    w.sim(
        Method::DELETE,
        &format!(
            "/_sim/groups/a1b2c3d4-0000-4000-8000-000000000002/members/{}",
            ext(7)
        ),
        None,
    )
    .await;
    w.sync().await;
    assert_eq!(w.user(7).await.unwrap()["in_rotation_group"], false);
    // A reveal makes a rotation due at once (rotate_after_reveal_hours 0) — for the one
    // still in the group only.
    w.reveal(&stays).await;
    w.reveal(&leaves).await;
    let h = w.rotations_settled(&stays, 2).await;
    assert_eq!(h[1]["reason"], "after_reveal", "{h:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.history(&leaves).await.len(), 1);

    // Without credentials nothing rotates; with them back, the due rotation follows.
    let (s, _) = w.remove_credentials().await;
    assert_eq!(s, StatusCode::OK);
    w.reveal(&stays).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.history(&stays).await.len(), 2);
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{stays}/rotate"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, _) = w
        .admin(
            Method::PUT,
            &format!("/v1/domains/{}/credentials", w.domain),
            Some(json!({"tenant_id": crate::support::TENANT, "client_id": APP, "client_secret": crate::support::SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let h = w.rotations_settled(&stays, 3).await;
    assert_eq!(h[2]["outcome"], "succeeded", "{h:?}");
}

#[tokio::test]
async fn manual_rotation_needs_an_active_user_with_a_key() {
    let w = world(json!({})).await;
    w.sync().await;
    let candidate = w.id(8).await;
    let (s, _) = w
        .admin(Method::POST, &format!("/v1/users/{candidate}/rotate"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    w.import_all().await;
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{candidate}/rotate"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "no key: {body}");
    let (s, _) = w
        .admin(
            Method::POST,
            &format!("/v1/users/{candidate}/password/reveal"),
            Some(json!({"reason": ""})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let auditor = w.app.token("auditor", &[]).await;
    let (s, _) = w
        .app
        .call(
            Some(&auditor),
            Method::POST,
            &format!("/v1/users/{candidate}/rotate"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_newer_rotation_supersedes_every_write_still_owed_and_an_older_password_never_returns() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(9, "K-0009").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 2).await;
    assert_eq!(h[0]["key_write_state"], "superseded", "{h:?}");
    assert_eq!(h[1]["key_write_state"], "queued", "{h:?}");
    let agent = w.app.token("agent", &["K-0009"]).await;
    let (_, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    let items = writes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{writes}");
    assert_eq!(items[0]["rotation_id"], h[1]["rotation_id"]);
    assert_eq!(
        items[0]["password"].as_str().unwrap(),
        w.sim_password(9).await
    );
    // Delivered but not acknowledged, then a third rotation: that password is no longer
    // the user's, so its write ends with it (handed out again after its lease, it would
    // overwrite the newer password on the key) and the third rotation's is queued.
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 3).await;
    assert_eq!(h[1]["key_write_state"], "superseded", "{h:?}");
    let (_, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    let items = writes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{writes}");
    assert_eq!(items[0]["rotation_id"], h[2]["rotation_id"]);
    // Handed out once per lease (1 s in these tests), not on every poll.
    let (_, again) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert!(again["items"].as_array().unwrap().is_empty(), "{again}");
    let third = items[0]["id"].as_str().unwrap().to_owned();
    let (s, body) = w
        .app
        .call(
            Some(&agent),
            Method::POST,
            &format!("/v1/agent/key-writes/{third}/ack"),
            Some(json!({"result": "written"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, after) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert!(
        after["items"].as_array().unwrap().is_empty(),
        "an older password came back after the newer was written: {after}"
    );

    // An agent of two keys pages their writes, oldest first: `next` is the cursor of the
    // page after.
    let other = w.assign_key(8, "K-0008").await;
    w.rotate(&other).await;
    let ho = w.rotations_settled(&other, 1).await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 4).await;
    let both = w.app.token("agent", &["K-0009", "K-0008"]).await;
    let (s, first) = w
        .app
        .call(
            Some(&both),
            Method::GET,
            "/v1/agent/key-writes?limit=1",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["items"][0]["rotation_id"], ho[0]["rotation_id"]);
    let next = first["next"].as_str().expect("a next page").to_owned();
    let (s, second) = w
        .app
        .call(
            Some(&both),
            Method::GET,
            &format!("/v1/agent/key-writes?limit=1&after={next}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{second}");
    assert_eq!(second["items"][0]["rotation_id"], h[3]["rotation_id"]);
    assert_eq!(second["next"], Value::Null, "{second}");
    let (s, _) = w
        .app
        .call(
            Some(&both),
            Method::GET,
            &format!("/v1/agent/key-writes?after={}", uuid::Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(w.deliveries(&id).await, 3, "each delivery is an event");

    // The history pages one rotation at a time, in the order of the whole list.
    let whole: Vec<Value> = w.history(&id).await;
    assert_eq!(whole.len(), 4);
    let history = format!("/v1/users/{id}/password-history?");
    let (paged, _) = crate::sync::all_pages(&w, &history, 1).await;
    let ids = |v: &[Value]| {
        v.iter()
            .map(|r| r["rotation_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&paged), ids(&whole));
    // Newest first pages the same list backwards.
    let newest = format!("/v1/users/{id}/password-history?order=newest");
    let (mut backwards, _) = crate::sync::all_pages(&w, &newest, 3).await;
    backwards.reverse();
    assert_eq!(ids(&backwards), ids(&whole));
    // One rotation by its id, as in the list; not under another user.
    let one = whole[2]["rotation_id"].as_str().unwrap();
    let (s, found) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{id}/password-history/{one}"),
            None,
        )
        .await;
    assert_eq!((s, &found), (StatusCode::OK, &whole[2]));
    let other = w.user(6).await.unwrap()["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/users/{other}/password-history/{one}"),
        format!("/v1/users/{id}/password-history/{}", uuid::Uuid::now_v7()),
    ] {
        let (s, _) = w.admin(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{id}/password-history/not-a-uuid"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let stranger = format!(
        "/v1/users/{id}/password-history?after={}",
        uuid::Uuid::now_v7()
    );
    let (s, _) = w.admin(Method::GET, &stranger, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // As it stood when the second rotation started: two rotations, the second in flight,
    // and the story up to that event, nothing after it, in either order.
    let (_, story) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{id}/timeline?limit=1000"),
            None,
        )
        .await;
    let story = story["items"].as_array().unwrap();
    let started = story
        .iter()
        .filter(|e| e["kind"] == "RotationStarted")
        .nth(1)
        .unwrap()["position"]
        .as_u64()
        .unwrap();
    let (s, then) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{id}/password-history?at_position={started}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{then}");
    let then = then["items"].as_array().unwrap();
    assert_eq!(ids(then), ids(&whole[..2]));
    assert_eq!(then[1]["outcome"], "pending", "{then:?}");
    let (s, told) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{id}/timeline?limit=1000&at_position={started}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{told}");
    let expected: Vec<&Value> = story
        .iter()
        .filter(|e| e["position"].as_u64().unwrap() <= started)
        .collect();
    assert_eq!(
        told["items"].as_array().unwrap().iter().collect::<Vec<_>>(),
        expected
    );
    // As of a time: everything committed by then, in the user's stream as in the log.
    let time = |e: &Value| {
        chrono::DateTime::parse_from_rfc3339(e["recorded_at"].as_str().unwrap()).unwrap()
    };
    let moment = time(story.iter().find(|e| e["position"] == started).unwrap());
    let by_then: Vec<&Value> = story.iter().filter(|e| time(e) <= moment).collect();
    let last = by_then.last().unwrap()["position"].as_u64().unwrap();
    let encoded = moment
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .replace(':', "%3A");
    let (_, told) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{id}/timeline?limit=1000&at={encoded}"),
            None,
        )
        .await;
    assert_eq!(
        told["items"].as_array().unwrap().iter().collect::<Vec<_>>(),
        by_then
    );
    for path in ["", "/password-history"] {
        let (s, by_time) = w
            .admin(
                Method::GET,
                &format!("/v1/users/{id}{path}?at={encoded}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{by_time}");
        let (_, by_position) = w
            .admin(
                Method::GET,
                &format!("/v1/users/{id}{path}?at_position={last}"),
                None,
            )
            .await;
        assert_eq!(by_time, by_position, "{path}");
    }
    // The user alone (their stream folded) is the user of the whole log's fold at every
    // point of their story: rotations started and finished, writes queued and superseded.
    for position in story.iter().map(|e| e["position"].as_u64().unwrap()) {
        let (s, one) = w
            .admin(
                Method::GET,
                &format!("/v1/users/{id}?at_position={position}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{one}");
        let (_, all) = w
            .admin(
                Method::GET,
                &format!("/v1/users?at_position={position}&include_deleted=true&limit=1000"),
                None,
            )
            .await;
        let listed = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == one["id"]);
        assert_eq!(Some(&one), listed, "at {position}");
    }
    let (mut backwards, _) = crate::sync::all_pages(
        &w,
        &format!("/v1/users/{id}/timeline?order=newest&at_position={started}"),
        2,
    )
    .await;
    backwards.reverse();
    assert_eq!(backwards.iter().collect::<Vec<_>>(), expected);
    let head = w.app.state.engine.log.head().position;
    for path in [
        format!("/v1/users/{id}/timeline?at_position={}", head + 1_000_000),
        format!(
            "/v1/users/{id}/password-history?at_position={}",
            head + 1_000_000
        ),
        format!("/v1/users/{id}/timeline?at_position=1&at=2026-01-01T00:00:00Z"),
        format!("/v1/users/{id}/password-history?at_position=1&at=2026-01-01T00:00:00Z"),
    ] {
        let (s, body) = w.admin(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    // Before the user was there, as the user's own page says.
    for path in [
        format!("/v1/users/{id}?at_position=1"),
        format!("/v1/users/{id}/timeline?at_position=1"),
    ] {
        let (s, body) = w.admin(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
    }
}

/// An agent polling from two threads at once must not be handed one password twice:
/// each delivery starts a lease, and a racing request sees it.
#[tokio::test]
async fn racing_polls_of_one_agent_hand_each_write_out_once() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(5, "K-0005").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let agent = w.app.token("agent", &["K-0005"]).await;
    let polls = (0..8).map(|_| {
        w.app
            .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
    });
    let mut handed = 0;
    for (s, writes) in futures_util::future::join_all(polls).await {
        assert_eq!(s, StatusCode::OK, "{writes}");
        handed += writes["items"].as_array().unwrap().len();
    }
    assert_eq!(handed, 1, "one write, handed out once");
    assert_eq!(w.deliveries(&id).await, 1);
}

/// A HEAD of the key writes would record deliveries whose answer (and passwords) the
/// server then drops: the writes would sit leased, as if handed out, though no agent
/// has them.
#[tokio::test]
async fn a_head_of_the_key_writes_hands_nothing_out() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(5, "K-0005").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let agent = w.app.token("agent", &["K-0005"]).await;
    let head = w.head().await;
    let (s, _) = w
        .app
        .call(Some(&agent), Method::HEAD, "/v1/agent/key-writes", None)
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(w.head().await, head, "nothing recorded");
    assert_eq!(w.deliveries(&id).await, 0);
    assert_eq!(
        w.agent_writes(&agent).await.len(),
        1,
        "still owed, not leased"
    );
}

/// A write handed out again after its lease (to a second agent of the key) is answered by
/// that delivery: the first agent's late "failed" is stale and refused, the second's
/// "written" counts.
#[tokio::test]
async fn an_answer_to_an_earlier_delivery_of_a_write_is_stale() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(6, "K-0006").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let (first, second) = (
        w.app.token("agent", &["K-0006"]).await,
        w.app.token("agent", &["K-0006"]).await,
    );
    let handed = w.agent_writes(&first).await[0].clone();
    assert_eq!(handed["delivery"], 1, "{handed}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = w.agent_writes(&second).await[0].clone();
    assert_eq!(
        (&again["id"], &again["delivery"]),
        (&handed["id"], &json!(2))
    );
    let path = format!(
        "/v1/agent/key-writes/{}/ack",
        handed["id"].as_str().unwrap()
    );
    let late = json!({"result": "failed", "detail": "timed out", "delivery": 1});
    let (s, body) = w
        .app
        .call(Some(&first), Method::POST, &path, Some(late))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, body) = w.ack_written(&second, &again).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let h = w.history(&id).await;
    assert_eq!(h[0]["key_write_state"], "confirmed", "{h:?}");
}

/// A reveal while Graph holds the first attempt of a rotation names that rotation's
/// password too: the request may land as the admin reads the answer, and then only the
/// candidate opens the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_while_the_first_attempt_is_in_flight_names_its_candidate() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(4, "K-0004").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let before = w.sim_password(4).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(
            json!({"method": "PATCH", "path_prefix": "/v1.0/users", "delay_ms": 1500, "count": 1}),
        ),
    )
    .await;
    w.rotate(&id).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w
        .sim_requests()
        .await
        .iter()
        .filter(|r| r["method"] == "PATCH")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no second PATCH reached graphsim"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revealed = w.reveal(&id).await;
    assert_eq!(
        revealed["password"].as_str(),
        Some(before.as_str()),
        "{revealed}"
    );
    let candidate = revealed["unconfirmed_candidate"]["password"]
        .as_str()
        .unwrap_or_else(|| panic!("no candidate named: {revealed}"))
        .to_owned();
    let h = w.rotations_settled(&id, 2).await;
    assert_eq!(h[1]["outcome"], "succeeded", "{h:?}");
    assert_eq!(w.sim_password(4).await, candidate);
}

/// Two agents serve one key. The first is handed a write; a newer rotation supersedes it;
/// the second writes the newer password; then the first writes the older one after all,
/// and says so. The key is owed the current password again, so it ends up holding what
/// Entra ID holds, not what it held a rotation ago.
#[tokio::test]
async fn a_late_write_of_a_superseded_password_is_followed_by_the_current_one() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(6, "K-0006").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let (first, second) = (
        w.app.token("agent", &["K-0006"]).await,
        w.app.token("agent", &["K-0006"]).await,
    );
    let older = w.agent_writes(&first).await[0].clone();
    w.rotate(&id).await;
    w.rotations_settled(&id, 2).await;
    let newer = w.agent_writes(&second).await;
    assert_eq!(
        newer.len(),
        1,
        "only the newest password is owed: {newer:?}"
    );
    let newer = newer[0].clone();
    assert_ne!(newer["password"], older["password"]);
    let (s, body) = w.ack_written(&second, &newer).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(w.agent_writes(&second).await.is_empty(), "nothing owed");

    // The older password lands on the key last.
    let (s, body) = w.ack_written(&first, &older).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let again = w.agent_writes(&second).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0]["id"], newer["id"], "a new write");
    assert_eq!(again[0]["rotation_id"], newer["rotation_id"]);
    let current = w.sim_password(6).await;
    assert_eq!(again[0]["password"].as_str().unwrap(), current);
    let (s, body) = w.ack_written(&second, &again[0]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // The same answer again (a retry after a lost answer) owes nothing more.
    let (s, body) = w.ack_written(&first, &older).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(w.agent_writes(&second).await.is_empty(), "nothing owed");
    assert!(w
        .kinds(&id)
        .await
        .iter()
        .any(|k| k == "KeyWriteWrittenLate"));
}

/// A password reaches only the key of the user it belongs to: B's key, taken away and
/// given to C, must not bring B's password to C's agent.
#[tokio::test]
async fn a_reassigned_key_receives_nothing_of_its_previous_holder() {
    let w = rotating_world(json!({})).await;
    let b = w.assign_key(3, "K-0003").await;
    w.rotate(&b).await;
    w.rotations_settled(&b, 1).await;
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/users/{b}/key"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let c = w.assign_key(4, "K-0003").await;
    let agent = w.app.token("agent", &["K-0003"]).await;
    let (s, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(writes["items"].as_array().unwrap().is_empty(), "{writes}");
    let h = w.history(&b).await;
    assert_eq!(h[0]["key_write_state"], "superseded", "{h:?}");
    let (_, events) = w
        .admin(Method::GET, &format!("/v1/users/{b}/events"), None)
        .await;
    let superseded = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "KeyWriteSuperseded")
        .expect("the unassignment says what became of the write");
    assert_eq!(
        superseded["payload"]["reason"],
        json!({"key_unassigned": {"key_id": "K-0003"}})
    );
    // C's own rotation reaches C's agent, and only C's.
    w.rotate(&c).await;
    w.rotations_settled(&c, 1).await;
    let (_, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    let items = writes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{writes}");
    assert_eq!(
        items[0]["user_principal_name"],
        w.user(4).await.unwrap()["user_principal_name"]
    );
    assert_eq!(
        items[0]["password"].as_str().unwrap(),
        w.sim_password(4).await
    );
}

/// Key K-0003 after A's write was handed out and before it was answered: taken from A
/// (user 3), given to B (user 4), B rotated and B's write handed out too.
struct KeyMoved {
    a: String,
    b: String,
    agent: String,
    of_a: Value,
    of_b: Value,
}

async fn key_moved_after_a_delivery() -> (World, KeyMoved) {
    let w = rotating_world(json!({})).await;
    let a = w.assign_key(3, "K-0003").await;
    w.rotate(&a).await;
    w.rotations_settled(&a, 1).await;
    let agent = w.app.token("agent", &["K-0003"]).await;
    let of_a = w.agent_writes(&agent).await[0].clone();
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/users/{a}/key"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let b = w.assign_key(4, "K-0003").await;
    w.rotate(&b).await;
    w.rotations_settled(&b, 1).await;
    let of_b = w.agent_writes(&agent).await;
    assert_eq!(of_b.len(), 1, "{of_b:?}");
    let of_b = of_b[0].clone();
    (
        w,
        KeyMoved {
            a,
            b,
            agent,
            of_a,
            of_b,
        },
    )
}

/// A's write, handed out before A's key went to B, lands on the key after B's own: B's
/// key holds A's password. B is owed theirs again, and A's may be in B's hands, so A is
/// rotated as soon as A has a key again.
#[tokio::test]
async fn a_late_write_onto_a_key_that_changed_hands_is_repaired_for_both_users() {
    let (
        w,
        KeyMoved {
            a,
            b,
            agent,
            of_a,
            of_b,
        },
    ) = key_moved_after_a_delivery().await;
    let (s, body) = w.ack_written(&agent, &of_b).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let (s, body) = w.ack_written(&agent, &of_a).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let again = w.agent_writes(&agent).await;
    assert_eq!(
        again.len(),
        1,
        "B's key is owed B's password again: {again:?}"
    );
    assert_eq!(
        again[0]["user_principal_name"],
        w.user(4).await.unwrap()["user_principal_name"]
    );
    assert_eq!(
        again[0]["password"].as_str().unwrap(),
        w.sim_password(4).await
    );
    // A retry of the same late answer owes nothing more.
    let (s, body) = w.ack_written(&agent, &of_a).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let queued = w.kinds(&b).await;
    assert_eq!(
        queued.iter().filter(|k| *k == "KeyWriteQueued").count(),
        2,
        "B's rotation and the one rewrite: {queued:?}"
    );

    assert!(w.kinds(&a).await.iter().any(|k| k == "RotationRequested"));
    let exposed = w.sim_password(3).await;
    w.assign_key(3, "K-0030").await;
    let h = w.rotations_settled(&a, 2).await;
    assert_eq!(h[1]["reason"], "exposed", "{h:?}");
    assert_ne!(w.sim_password(3).await, exposed);
}

/// The agent's retry of a late answer asks for the new holder's rewrite again: the first
/// answer found one of theirs still owed (handed out, not answered), which is confirmed
/// before the retry comes.
#[tokio::test]
async fn a_retried_late_answer_asks_for_the_holders_rewrite_again() {
    let (
        w,
        KeyMoved {
            b,
            agent,
            of_a,
            of_b,
            ..
        },
    ) = key_moved_after_a_delivery().await;
    // A's write lands while B's is still being written: nothing more is owed yet.
    let (s, body) = w.ack_written(&agent, &of_a).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let queued = |kinds: Vec<String>| kinds.iter().filter(|k| *k == "KeyWriteQueued").count();
    assert_eq!(queued(w.kinds(&b).await), 1);
    let (s, body) = w.ack_written(&agent, &of_b).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // The retry: B's key is owed B's password again.
    let (s, body) = w.ack_written(&agent, &of_a).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(queued(w.kinds(&b).await), 2);
}

/// A user who lost a key gets a new one: it is given the password the engine holds now,
/// not left empty until the next rotation (days away); the old key gets nothing more.
#[tokio::test]
async fn a_replacement_key_is_given_the_current_password() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(3, "K-OLD").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let (s, body) = w.put_key(&id, "K-NEW").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let old = w.app.token("agent", &["K-OLD"]).await;
    let (_, writes) = w
        .app
        .call(Some(&old), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert!(writes["items"].as_array().unwrap().is_empty(), "{writes}");
    let new = w.app.token("agent", &["K-NEW"]).await;
    let (s, writes) = w
        .app
        .call(Some(&new), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{writes}");
    let items = writes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{writes}");
    assert_eq!(items[0]["key_id"], "K-NEW");
    assert_eq!(
        items[0]["password"].as_str().unwrap(),
        w.sim_password(3).await
    );
    // Only one rotation: the key got the password Entra holds, no new one was set.
    assert_eq!(w.history(&id).await.len(), 1);
}

/// A deleted user's data key is shredded, so the writes their key was still owed can
/// never be delivered: the deletion says so in the same append, and the history shows
/// them superseded rather than queued forever.
#[tokio::test]
async fn deleting_a_user_supersedes_the_writes_their_key_was_owed() {
    let w = rotating_world(json!({"removal_behavior": "delete"})).await;
    let id = w.assign_key(6, "K-0006").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let agent = w.app.token("agent", &["K-0006"]).await;
    // The write is handed out and not acknowledged (the agent may yet write it).
    let (s, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(writes["items"].as_array().unwrap().len(), 1, "{writes}");
    w.leave(6).await;
    w.sync().await;
    let (s, user) = w.admin(Method::GET, &format!("/v1/users/{id}"), None).await;
    assert_eq!(user["status"], "deleted", "{s} {user}");
    let h = w.history(&id).await;
    assert_eq!(h[0]["key_write_state"], "superseded", "{h:?}");
    let (_, events) = w
        .admin(Method::GET, &format!("/v1/users/{id}/events"), None)
        .await;
    let items = events["items"].as_array().unwrap();
    let deleted = items
        .iter()
        .position(|e| e["kind"] == "UserDeleted")
        .expect("deleted");
    let superseded = &items[deleted + 1..];
    assert_eq!(superseded.len(), 1, "{superseded:?}");
    assert_eq!(superseded[0]["kind"], "KeyWriteSuperseded");
    assert_eq!(
        superseded[0]["payload"]["reason"],
        json!({"user_deleted": {}})
    );
    assert_eq!(
        superseded[0]["position"].as_u64(),
        items[deleted]["position"].as_u64().map(|p| p + 1),
        "one append"
    );
    let (_, writes) = w
        .app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert!(writes["items"].as_array().unwrap().is_empty(), "{writes}");
}

/// A shred whose rewrite of the key store failed is retried by the next run: the
/// deleted user's key does not wait in the file for a restart.
#[tokio::test]
async fn a_shred_that_failed_is_done_by_the_next_run() {
    let w = rotating_world(json!({"removal_behavior": "delete"})).await;
    let id = w.assign_key(6, "K-0006").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let data = w.app.dir.path();
    assert!(crate::backup::holds_key_of(data, &id));
    // The rewrite's temporary file cannot be made where a directory stands.
    let tmp = data.join("keystore.tmp");
    std::fs::create_dir(&tmp).unwrap();
    w.leave(6).await;
    w.sync_domain(&w.domain).await;
    let (_, user) = w.admin(Method::GET, &format!("/v1/users/{id}"), None).await;
    assert_eq!(user["status"], "deleted", "{user}");
    assert!(
        crate::backup::holds_key_of(data, &id),
        "the rewrite could not run"
    );
    std::fs::remove_dir(&tmp).unwrap();
    w.sync().await;
    // The shred follows the run's last event: wait for it, boundedly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::backup::holds_key_of(data, &id) {
        assert!(
            std::time::Instant::now() < deadline,
            "not shredded by the next run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One key serves one live user, even when admins assign it to several at the same moment;
/// once it is taken back, another user may have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_assigned_to_many_users_at_once_goes_to_exactly_one() {
    let w = world(json!({})).await;
    w.sync().await;
    w.import_all().await;
    let mut users = Vec::new();
    for n in 11..19 {
        users.push(w.id(n).await);
    }
    let paths: Vec<String> = users.iter().map(|u| format!("/v1/users/{u}/key")).collect();
    let tries = paths
        .iter()
        .map(|p| w.admin(Method::PUT, p, Some(json!({"key_id": "SHARED-1"}))));
    let answers = futures_util::future::join_all(tries).await;
    let won: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{answers:?}"
    );
    let winner = &users[won[0]];
    let other = users.iter().find(|u| *u != winner).unwrap();
    let (s, _) = w
        .admin(Method::DELETE, &format!("/v1/users/{winner}/key"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = w.put_key(other, "SHARED-1").await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

/// The scheduler decides at its tick, and a user may wait behind the domain's
/// `max_concurrent_rotations`: when their turn comes, whether they are due is decided
/// again, so one who left the rotation group meanwhile is not rotated.
#[tokio::test]
async fn a_user_no_longer_due_when_their_turn_comes_is_not_rotated() {
    let w = rotating_world(json!({"max_concurrent_rotations": 1})).await;
    let ids = [
        w.assign_key(2, "K-0002").await,
        w.assign_key(3, "K-0003").await,
    ];
    // The first password write is held: the first user takes the domain's one slot.
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(
            json!({"method": "PATCH", "path_prefix": "/v1.0/users", "delay_ms": 2000, "count": 1}),
        ),
    )
    .await;
    // Both become due at once.
    let (s, body) = w
        .admin(
            Method::PATCH,
            &format!("/v1/domains/{}", w.domain),
            Some(json!({"auto_password_change_days": 30})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let mut started = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if !w.history(id).await.is_empty() {
                started.push(i);
            }
        }
        match started[..] {
            [i] => break i,
            [] => {}
            _ => panic!("both started: the limit is one"),
        }
        assert!(Instant::now() < deadline, "no rotation started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waiting = 1 - first;
    // While it waits, the other leaves the rotation group.
    w.sim(
        Method::DELETE,
        &format!(
            "/_sim/groups/a1b2c3d4-0000-4000-8000-000000000002/members/{}",
            ext([2, 3][waiting])
        ),
        None,
    )
    .await;
    w.sync().await;
    assert_eq!(
        w.user([2, 3][waiting]).await.unwrap()["in_rotation_group"],
        false
    );
    w.rotations_settled(&ids[first], 1).await;
    // Several ticks after the slot is free: nothing for the one who left.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(w.history(&ids[waiting]).await.is_empty());
}

/// Users of a federated domain keep their passwords with the federation's identity
/// provider, and Graph cannot set them: they are never rotated, on schedule or by hand.
/// Sync records the tenant's federated domains when they change, both ways.
#[tokio::test]
async fn users_of_a_federated_domain_are_not_rotated() {
    let w = rotating_world(json!({"auto_password_change_days": 30})).await;
    let megan = "c0a80000-0000-4000-8000-0000000fed01";
    w.sim(
        Method::PUT,
        "/_sim/domains/fabrikam.com",
        Some(json!({"authenticationType": "Federated"})),
    )
    .await;
    w.sim(
        Method::POST,
        "/_sim/users",
        Some(
            json!({"id": megan, "userPrincipalName": "Megan.Bowen@Fabrikam.com",
                    "displayName": "Megan Bowen"}),
        ),
    )
    .await;
    for group in [crate::support::SYNC, "a1b2c3d4-0000-4000-8000-000000000002"] {
        w.sim(
            Method::POST,
            &format!("/_sim/groups/{group}/members/{megan}"),
            None,
        )
        .await;
    }
    let head = w.head().await;
    w.sync().await;
    w.sync().await;
    let seen = w
        .events_after(head)
        .await
        .into_iter()
        .filter(|(_, k)| k == "FederatedDomainsSeen")
        .count();
    assert_eq!(seen, 1, "recorded when it changes, not every run");
    let id = w
        .users("")
        .await
        .into_iter()
        .find(|u| u["external_id"] == megan)
        .expect("Megan synced")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, body) = w.put_key(&id, "K-FED").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // A managed user with a key is rotated on schedule meanwhile; Megan is not.
    let alex = w.assign_key(2, "K-0002").await;
    w.rotations_settled(&alex, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.history(&id).await.is_empty());
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{id}/rotate"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("federated"),
        "{body}"
    );
    let (s, up) = w
        .admin(Method::GET, "/v1/rotations/upcoming?within_days=31", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!up.to_string().contains(&id), "{up}");

    // The domain becomes managed: the next sync says so, and Megan is rotated.
    w.sim(
        Method::PUT,
        "/_sim/domains/fabrikam.com",
        Some(json!({"authenticationType": "Managed"})),
    )
    .await;
    w.sync().await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");

    // Federated again before a sync has seen it: Graph itself refuses the password, and
    // the engine keeps the one it holds.
    w.sim(
        Method::PUT,
        "/_sim/domains/fabrikam.com",
        Some(json!({"authenticationType": "Federated"})),
    )
    .await;
    let before = w.sim_password_of(megan).await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 2).await;
    assert_eq!(h[1]["outcome"], "failed", "{h:?}");
    assert_eq!(h[1]["graph_code"], "Request_BadRequest", "{h:?}");
    assert_eq!(w.sim_password_of(megan).await, before);
}

/// A rotation Graph keeps throttling gives way after a drive's attempts, and the next
/// drive still waits what Graph asked: no PATCH comes sooner than its `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_throttled_for_long_never_asks_sooner_than_graph_said() {
    // One try per Graph call, and a Retry-After longer than the client waits itself: the
    // rotation's own waits are all there is.
    let sync = idledger::sync::SyncConfig {
        retry: idledger::graph::RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
        },
        ..idledger::sync::SyncConfig::default()
    };
    let w = crate::support::world_in(
        crate::support::spawn_app_with(sync).await,
        crate::support::sim().await,
        None,
        json!({"auto_import": true}),
    )
    .await;
    w.sync().await;
    let id = w.assign_key(2, "K-0002").await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(
            json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 429,
                    "retry_after": 1.0, "count": 6}),
        ),
    )
    .await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = w
        .sim_requests()
        .await
        .iter()
        .filter(|r| r["method"] == "PATCH")
        .map(|r| chrono::DateTime::parse_from_rfc3339(r["time"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(times.len(), 7, "six throttled, then set");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= chrono::Duration::milliseconds(900),
            "a PATCH {gap} after a 429 asking for 1 s"
        );
    }
}

/// A key its agent could not write holds another password than Entra ID: the user shows
/// it, and on the admin's request the agent is handed the current password again. Asked
/// while a write is still owed, the request is refused (two writes would race on the key).
#[tokio::test]
async fn a_key_write_that_failed_is_written_again_on_request() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(6, "K-0006").await;
    w.rotate(&id).await;
    w.rotations_settled(&id, 1).await;
    let agent = w.app.token("agent", &["K-0006"]).await;
    let rewrite = format!("/v1/users/{id}/key/rewrite");
    let (s, body) = w.admin(Method::POST, &rewrite, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "queued still: {body}");
    let handed = w.agent_writes(&agent).await[0].clone();
    let (s, body) = w.admin(Method::POST, &rewrite, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "handed out, unanswered: {body}");
    let path = format!(
        "/v1/agent/key-writes/{}/ack",
        handed["id"].as_str().unwrap()
    );
    let failed = json!({"result": "failed", "detail": "no key in the reader"});
    let (s, body) = w
        .app
        .call(Some(&agent), Method::POST, &path, Some(failed))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let user = w.user(6).await.unwrap();
    assert_eq!(user["key_write"]["state"], "failed", "{user}");
    assert_eq!(user["key_write"]["detail"], "no key in the reader");
    assert!(
        w.agent_writes(&agent).await.is_empty(),
        "a failed write is final"
    );

    let (s, user) = w.admin(Method::POST, &rewrite, None).await;
    assert_eq!(s, StatusCode::OK, "{user}");
    assert_eq!(user["key_write"]["state"], "queued", "{user}");
    assert_ne!(user["key_write"]["id"], handed["id"]);
    let again = w.agent_writes(&agent).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["id"], user["key_write"]["id"]);
    assert_eq!(
        again[0]["password"].as_str().unwrap(),
        w.sim_password(6).await
    );
    let (s, body) = w.ack_written(&agent, &again[0]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(w.user(6).await.unwrap()["key_write"]["state"], "confirmed");
    // Another user's agent sees nothing of it, and a user without a key has none to write.
    let other = w.app.token("agent", &["K-0007"]).await;
    assert!(w.agent_writes(&other).await.is_empty());
    let keyless = w.id(7).await;
    let (s, body) = w
        .admin(
            Method::POST,
            &format!("/v1/users/{keyless}/key/rewrite"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
}

/// A user whose data key is gone (shredded as they were deleted, the reveal racing it; or
/// a restore from before a shred) has a password no one can open: a clear answer, not a
/// 500, and nothing recorded as revealed.
#[tokio::test]
async fn a_reveal_of_a_password_whose_key_is_gone_is_a_clear_refusal() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(2, "K-0002").await;
    w.rotate(&id).await;
    assert_eq!(w.rotations_settled(&id, 1).await[0]["outcome"], "succeeded");
    let stream = idledger_domain::StreamId::user(idledger_domain::UserId(id.parse().unwrap()));
    w.app.state.engine.keyring.shred(&stream).unwrap();
    let head = w.head().await;
    let (s, body) = w.reveal_answer(&id).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rotate"),
        "{body}"
    );
    assert_eq!(w.head().await, head, "recorded as revealed");
}

/// A password request that never left (the token endpoint failing) is no unknown
/// outcome: Graph's definite refusal after it still ends the rotation as failed, rather
/// than leaving the user needing attention for a password Graph was never asked to set.
#[tokio::test]
async fn a_request_that_never_left_opens_no_uncertainty() {
    let w = rotating_world(json!({})).await;
    let id = w.assign_key(3, "K-0003").await;
    let patch = format!("/v1.0/users/{}", ext(3));
    let token = format!("/{}/oauth2/v2.0/token", crate::support::TENANT);
    for fault in [
        // The cached token is refused, and the new one cannot be had for a while.
        json!({"method": "PATCH", "path_prefix": patch, "status": 401, "count": 1}),
        json!({"method": "POST", "path_prefix": token, "status": 500, "count": 8}),
        json!({"method": "PATCH", "path_prefix": patch, "status": 403, "count": 1}),
    ] {
        w.sim(Method::POST, "/_sim/faults", Some(fault)).await;
    }
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "failed", "{h:?}");
    let kinds = w.kinds(&id).await;
    assert!(!kinds.iter().any(|k| k == "RotationRetried"), "{kinds:?}");
}
