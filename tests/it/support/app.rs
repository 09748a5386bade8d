//! The server in this test process on a loopback port (`spawn_app`), and its client.

use idledger::http::AppState;
use idledger::store::{AppendRequest, ExpectedVersion};
use idledger_domain::events::{UserDiscovered, UserImported};
use idledger_domain::{
    Actor, DomainId, ProposedEvent, SsoSettings, StreamId, UserAttributes, UserId,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

pub struct App {
    pub dir: tempfile::TempDir,
    pub url: String,
    /// The same server as users' browsers reach it: `http://localhost:<port>`.
    pub public: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub state: AppState,
}

pub async fn spawn_app() -> App {
    spawn_app_with(idledger::sync::SyncConfig::default()).await
}

/// [`spawn_app`] with the sync workers' settings (a Graph CA bundle, say).
pub async fn spawn_app_with(sync: idledger::sync::SyncConfig) -> App {
    spawn_app_tuned(sync, |_| {}).await
}

/// [`spawn_app_with`], with `tune` changing the server's configuration last.
pub async fn spawn_app_tuned(
    sync: idledger::sync::SyncConfig,
    tune: impl FnOnce(&mut idledger::server::Config),
) -> App {
    let dir = tempfile::tempdir().unwrap();
    // Rotation ticks fast, so tests of scheduled rotations take a fraction of a second.
    let rotation = idledger::rotation::RotationConfig {
        check_every: Duration::from_millis(100),
        max_attempts: 4,
        retry_delay: Duration::from_millis(50),
        uncertainty: Duration::from_secs(2),
    };
    let mut config = idledger::server::Config {
        // Agents' leases end soon, so tests of redelivery take a second.
        agent_lease_secs: 1,
        max_event_streams: 8,
        allow_master_key_in_data_dir: true,
        // Heads are signed soon after appends, so proofs are at hand.
        sth_interval_ms: 20,
        ..idledger::server::Config::default()
    };
    tune(&mut config);
    let (state, bootstrap) = idledger::server::start_with(dir.path(), &config, sync, rotation)
        .await
        .unwrap();
    let admin = std::fs::read_to_string(bootstrap.expect("a bootstrap token on a new data dir"))
        .unwrap()
        .trim()
        .to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    // Browsers reach it at `localhost` (a WebAuthn relying-party id is a name, not an IP),
    // unless the test names the public origin itself.
    let mut state = state;
    if state.public_url.is_none() {
        state.public_url = idledger::http::PublicUrl::loopback_default(addr, false);
    }
    let public = state.public_url.as_ref().unwrap().origin.clone();
    tokio::spawn(idledger::http::serve(
        listener,
        idledger::console::app(state.clone()),
        config.limits(),
        None,
        std::future::pending(),
    ));
    App {
        dir,
        url,
        public,
        admin,
        http: reqwest::Client::new(),
        state,
    }
}

impl App {
    pub async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A GET with extra headers; the answer as JSON (or text).
    pub async fn call_with(
        &self,
        token: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The admin's GET of `path`, as it came (headers and all).
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
    }

    pub async fn token(&self, role: &str, keys: &[&str]) -> String {
        self.token_and_id(role, keys).await.0
    }

    /// A new token of `role` (named after it), and its id for revoking it.
    pub async fn token_and_id(&self, role: &str, keys: &[&str]) -> (String, String) {
        let (s, body) = self
            .call(
                Some(&self.admin),
                Method::POST,
                "/v1/tokens",
                Some(json!({"role": role, "name": role, "key_ids": keys})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        let text = |k: &str| body[k].as_str().unwrap().to_owned();
        (text("token"), text("id"))
    }

    /// The admin revokes the token `id`; answers the status.
    pub async fn revoke(&self, id: &str) -> StatusCode {
        let path = format!("/v1/tokens/{id}");
        self.call(Some(&self.admin), Method::DELETE, &path, None)
            .await
            .0
    }

    /// `POST /v1/audit/verify-export` of `manifest`'s line followed by `file`, by `token`.
    pub async fn verify_upload(
        &self,
        token: &str,
        manifest: &Value,
        file: &[u8],
    ) -> reqwest::Response {
        let mut upload = serde_json::to_vec(manifest).unwrap();
        upload.push(b'\n');
        upload.extend_from_slice(file);
        self.http
            .post(format!("{}/v1/audit/verify-export", self.url))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(upload)
            .send()
            .await
            .unwrap()
    }

    pub async fn domain(&self, name: &str) -> Value {
        let (s, body) = self
            .call(
                Some(&self.admin),
                Method::POST,
                "/v1/domains",
                Some(json!({"domain": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        body
    }

    /// A user as sync creates them, appended directly (for tests that need no Graph).
    pub async fn user(&self, domain: &str) -> UserId {
        self.user_named(domain, "Megan Bowen").await
    }

    /// [`App::user`] with the display name `name`.
    pub async fn user_named(&self, domain: &str, name: &str) -> UserId {
        let user = UserId(uuid::Uuid::now_v7());
        let events = vec![
            ProposedEvent::new(
                uuid::Uuid::now_v7(),
                Actor::System,
                UserDiscovered {
                    user_id: user,
                    domain_id: DomainId(domain.parse().unwrap()),
                    external_id: uuid::Uuid::new_v4().to_string(),
                    attributes: UserAttributes {
                        user_principal_name: format!("{}@contoso.onmicrosoft.com", user.0.simple()),
                        display_name: name.into(),
                        account_enabled: true,
                        ..UserAttributes::default()
                    },
                },
            ),
            ProposedEvent::new(
                uuid::Uuid::now_v7(),
                Actor::System,
                UserImported {
                    sso: SsoSettings::default(),
                },
            ),
        ];
        let done = self
            .state
            .engine
            .log
            .append(AppendRequest::new(
                StreamId::user(user),
                ExpectedVersion::NoStream,
                events,
            ))
            .await
            .unwrap();
        self.state
            .engine
            .projector
            .wait_for(done.last_position, Duration::from_secs(5))
            .await
            .unwrap();
        user
    }

    pub fn head(&self) -> u64 {
        self.state.engine.log.head().position
    }
}
