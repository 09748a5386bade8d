//! A world of the server and a graphsim holding the contoso tenant, with a domain that
//! reaches it (`world`), and the steps tests take in it.

use super::app::{spawn_app, spawn_app_with, App};
use graphsim::{load_tenant, SimConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const TENANT: &str = "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b";
pub const APP: &str = "11111111-2222-4333-8444-555555555555";
pub const SECRET: &str = "contoso-demo-secret";
pub const SYNC: &str = "a1b2c3d4-0000-4000-8000-000000000001";

pub fn ext(n: u32) -> String {
    format!("c0a80000-0000-4000-8000-{n:012}")
}

pub struct World {
    pub app: App,
    pub sim: String,
    /// A client of graphsim's own routes (it trusts the sim's CA when it speaks HTTPS).
    pub sim_http: reqwest::Client,
    /// The certificate of the CA that signed graphsim's, when it speaks HTTPS.
    pub sim_ca: Option<String>,
    pub domain: String,
}

/// The contoso fixture tenant.
pub fn contoso() -> graphsim::Directory {
    load_tenant(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tenants/contoso.json"),
    )
    .unwrap()
}

/// Small pages, so every round is paged.
fn sim_config() -> SimConfig {
    SimConfig {
        page_size: 7,
        ..SimConfig::default()
    }
}

pub async fn sim() -> String {
    graphsim::spawn(contoso(), sim_config()).await.unwrap().0
}

/// A graphsim holding the contoso directory as another tenant (`tenant_id`): a second
/// tenant for the same server, as one tenant serves one domain.
pub async fn sim_of_tenant(tenant_id: &str) -> String {
    let mut directory = contoso();
    directory.tenant_id = tenant_id.to_owned();
    graphsim::spawn(directory, sim_config()).await.unwrap().0
}

/// graphsim over HTTPS at `https://localhost:<port>`, with a certificate from a CA made
/// here; answers its URL and the CA's certificate (PEM).
pub async fn tls_sim() -> (String, String) {
    let ca = graphsim::tls::TestCa::new("idledger test CA").unwrap();
    let url = tls_sim_with(&ca.issue(&["localhost"]).unwrap()).await;
    (url, ca.cert_pem())
}

/// graphsim over HTTPS with the certificate `leaf`; its URL.
pub async fn tls_sim_with(leaf: &graphsim::tls::Issued) -> String {
    graphsim::spawn_tls(contoso(), sim_config(), leaf.server_config().unwrap())
        .await
        .unwrap()
        .0
}

/// A client that trusts `ca_pem` (and nothing else but the built-in roots).
pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

pub fn domain_body(name: &str, sim: &str, secret: &str, settings: &Value) -> Value {
    let mut body = json!({
        "domain": name,
        "tenant_id": TENANT,
        "client_id": APP,
        "client_secret": secret,
        "graph_url": sim,
        "authority_url": sim,
    });
    for (k, v) in settings.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

pub async fn world(settings: Value) -> World {
    let sim = sim().await;
    world_in(spawn_app().await, sim, None, settings).await
}

/// [`world`] with graphsim over HTTPS: the server's Graph client trusts its CA through
/// the same `GraphTrust` that `graph_ca_bundle` makes.
pub async fn tls_world(settings: Value) -> World {
    let (sim, ca) = tls_sim().await;
    let sync = idledger::sync::SyncConfig {
        trust: idledger::graph::GraphTrust::with_pem_bundle(ca.as_bytes()).unwrap(),
        ..idledger::sync::SyncConfig::default()
    };
    world_in(spawn_app_with(sync).await, sim, Some(ca), settings).await
}

/// A world of `app` and the graphsim at `sim` (whose CA is `sim_ca`, over HTTPS), with the
/// contoso domain added.
pub async fn world_in(app: App, sim: String, sim_ca: Option<String>, settings: Value) -> World {
    let (s, d) = app
        .call(
            Some(&app.admin),
            Method::POST,
            "/v1/domains",
            Some(domain_body(
                "contoso.onmicrosoft.com",
                &sim,
                SECRET,
                &settings,
            )),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    World {
        domain: d["id"].as_str().unwrap().to_owned(),
        app,
        sim_http: match &sim_ca {
            Some(ca) => client_trusting(ca),
            None => reqwest::Client::new(),
        },
        sim_ca,
        sim,
    }
}

impl World {
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.app
            .call(Some(&self.app.admin), method, path, body)
            .await
    }

    /// `DELETE /v1/domains/{domain}/credentials`: sync of the world's domain stops.
    pub async fn remove_credentials(&self) -> (StatusCode, Value) {
        let path = format!("/v1/domains/{}/credentials", self.domain);
        self.admin(Method::DELETE, &path, None).await
    }

    /// `PUT /v1/users/{user}/key`: gives `key` to the user.
    pub async fn put_key(&self, user: &str, key: &str) -> (StatusCode, Value) {
        self.admin(
            Method::PUT,
            &format!("/v1/users/{user}/key"),
            Some(json!({ "key_id": key })),
        )
        .await
    }

    /// Starts a run and waits for its end.
    pub async fn sync_domain(&self, domain: &str) -> Value {
        let (s, started) = self
            .admin(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{started}");
        let run = started["run_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, r) = self
                .admin(
                    Method::GET,
                    &format!("/v1/domains/{domain}/sync-runs/{run}"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{r}");
            if r["status"] != "running" {
                return r;
            }
            assert!(Instant::now() < deadline, "run still running: {r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A run of the world's domain that must fail with an error naming each of `naming`.
    pub async fn sync_fails(&self, naming: &[&str]) -> Value {
        let run = self.sync_domain(&self.domain).await;
        assert_eq!(run["status"], "failed", "{run}");
        let error = run["error"].as_str().unwrap_or_default();
        for n in naming {
            assert!(error.contains(n), "{error:?} should name {n:?}");
        }
        run
    }

    pub async fn sync(&self) -> Value {
        let run = self.sync_domain(&self.domain).await;
        assert_ne!(run["status"], "failed", "{run}");
        run
    }

    pub async fn sim(&self, method: Method, path: &str, body: Option<Value>) {
        let mut req = self.sim_http.request(method, format!("{}{path}", self.sim));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Every request graphsim received, oldest first.
    pub async fn sim_requests(&self) -> Vec<Value> {
        serde_json::from_value(self.sim_get("/_sim/requests").await).unwrap()
    }

    /// A graphsim control route's answer.
    pub async fn sim_get(&self, path: &str) -> Value {
        self.sim_http
            .get(format!("{}{path}", self.sim))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn leave(&self, n: u32) {
        self.sim(
            Method::DELETE,
            &format!("/_sim/groups/{SYNC}/members/{}", ext(n)),
            None,
        )
        .await;
    }

    pub async fn join(&self, n: u32) {
        self.sim(
            Method::POST,
            &format!("/_sim/groups/{SYNC}/members/{}", ext(n)),
            None,
        )
        .await;
    }

    /// Users of the domain, by Entra object id (deleted ones too with `include_deleted`).
    pub async fn users(&self, query: &str) -> Vec<Value> {
        let (s, body) = self
            .admin(
                Method::GET,
                &format!("/v1/users?domain={}&limit=1000{query}", self.domain),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    pub async fn user(&self, n: u32) -> Option<Value> {
        self.users("")
            .await
            .into_iter()
            .find(|u| u["external_id"] == ext(n).as_str())
    }

    pub async fn head(&self) -> u64 {
        self.app.head()
    }

    /// The events appended after `from` (the first 10,000), whole.
    pub async fn events_since(&self, from: u64) -> Vec<Value> {
        let (s, body) = self
            .admin(
                Method::GET,
                &format!("/v1/events?from_position={}&limit=10000", from + 1),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    /// Streams and kinds of the events appended after `from`.
    pub async fn events_after(&self, from: u64) -> Vec<(String, String)> {
        self.events_since(from)
            .await
            .iter()
            .map(|e| {
                let text = |field: &str| e[field].as_str().unwrap().to_owned();
                (text("stream"), text("kind"))
            })
            .collect()
    }

    /// The first event of `kind` appended after `from`, whole.
    pub async fn first_event_after(&self, from: u64, kind: &str) -> Value {
        let events = self.events_since(from).await;
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} after {from}: {events:?}"))
            .clone()
    }

    /// Kinds of the user events appended after `from`.
    pub async fn user_events_after(&self, from: u64) -> Vec<String> {
        let events = self.events_after(from).await;
        events
            .into_iter()
            .filter(|(stream, _)| stream.starts_with("user-"))
            .map(|(_, kind)| kind)
            .collect()
    }

    pub async fn import_all(&self) {
        let (s, body) = self
            .admin(
                Method::POST,
                &format!("/v1/domains/{}/import", self.domain),
                Some(json!({"all": true})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
}
