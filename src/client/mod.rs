//! A small client of the engine's own API, for the CLI commands that drive a server the
//! way an admin would (`demo`, `bench sync`).

use crate::error::Error;
use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

/// An admin (or any token holder) talking to a server.
pub struct ApiClient {
    http: reqwest::Client,
    /// The server's base URL.
    pub url: String,
    /// The bearer token.
    pub token: String,
}

impl ApiClient {
    /// A client of `url` with `token`.
    pub fn new(url: String, token: String) -> Self {
        ApiClient {
            http: reqwest::Client::new(),
            url,
            token,
        }
    }

    /// Calls the API; a non-2xx answer is an error carrying the answer's body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Other(format!("{method} {path}: {e}")))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(Error::Other(format!("{method} {path}: {status} {body}")));
        }
        Ok(body)
    }

    /// Starts a sync run of `domain` and waits (at most `limit`) for its end; answers the
    /// run without its per-user outcomes.
    pub async fn sync_and_wait(&self, domain: &str, limit: Duration) -> Result<Value, Error> {
        let started = self
            .call(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
            .await?;
        let run = started["run_id"].as_str().unwrap_or_default().to_owned();
        let deadline = Instant::now() + limit;
        loop {
            // The list, not the run itself: a first run's per-user outcomes are large.
            let runs = self
                .call(
                    Method::GET,
                    &format!("/v1/domains/{domain}/sync-runs"),
                    None,
                )
                .await?;
            let r = runs["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["run_id"] == run.as_str());
            if let Some(r) = r.filter(|r| r["status"] != "running") {
                return Ok(r.clone());
            }
            if Instant::now() > deadline {
                return Err(Error::Other(format!("sync run {run} did not finish")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A `serve` child process of this same binary on a free loopback port, with an admin
/// client from its bootstrap token; killed when dropped. Benchmarks use it so that the
/// engine's figures (memory above all) are its own.
pub struct ServeProcess {
    child: std::process::Child,
    /// An admin client of it.
    pub api: ApiClient,
}

impl ServeProcess {
    /// Starts `serve` of this same binary on `data_dir` with extra environment variables.
    pub async fn start(
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Result<ServeProcess, Error> {
        Self::start_program(&std::env::current_exe()?, data_dir, env, None).await
    }

    /// Starts `program serve` (an `idledger` binary) on `data_dir`, new or used before,
    /// with extra environment variables; its log goes to `log` (appended) or nowhere.
    pub async fn start_program(
        program: &std::path::Path,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Result<ServeProcess, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(program);
        // Benchmarks, the demo and tests: their data dirs are throwaway.
        cmd.args([
            "serve",
            "--allow-master-key-in-data-dir",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("IDLEDGER_REQUEST_TIMEOUT_SECS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(match log {
            None => std::process::Stdio::null(),
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .into(),
        });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let token = loop {
            let ready = reqwest::get(format!("{url}/healthz")).await.is_ok();
            if let (true, Ok(t)) = (ready, std::fs::read_to_string(data_dir.join("admin.token"))) {
                break t.trim().to_owned();
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                return Err(Error::Other("the serve process did not come up".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(ServeProcess {
            child,
            api: ApiClient::new(url, token),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once (SIGKILL), as a power cut would stop it, and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The contoso tenant (`fixtures/tenants/contoso.json`, built into the binary) and its
/// demo app registration: what `demo` and the benchmarks run against.
pub mod contoso {
    /// The tenant file.
    pub const TENANT_FILE: &str = include_str!("../../fixtures/tenants/contoso.json");
    /// Its domain name.
    pub const DOMAIN: &str = "contoso.onmicrosoft.com";
    /// Its tenant id.
    pub const TENANT: &str = "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    /// The app with every permission the product needs.
    pub const CLIENT_ID: &str = "11111111-2222-4333-8444-555555555555";
    /// That app's secret.
    pub const CLIENT_SECRET: &str = "contoso-demo-secret";
    /// The sync group's name.
    pub const SYNC_GROUP: &str = "Hideez Users Sync";
    /// The rotation group's name.
    pub const ROTATION_GROUP: &str = "Hideez Key Auto Password Change";

    /// The tenant, parsed.
    pub fn directory() -> Result<graphsim::Directory, crate::error::Error> {
        graphsim::parse_tenant(TENANT_FILE).map_err(crate::error::Error::Other)
    }

    /// The credentials of the demo app, as `PUT /v1/domains/{id}/credentials` takes them.
    pub fn credentials() -> serde_json::Value {
        serde_json::json!({"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    }
}

impl ApiClient {
    /// Adds the contoso domain with the demo app's credentials, Graph at `graph_url`, and
    /// any further `settings`; answers the domain.
    pub async fn add_contoso(&self, graph_url: &str, settings: Value) -> Result<Value, Error> {
        let mut body = contoso::credentials();
        body["domain"] = contoso::DOMAIN.into();
        body["graph_url"] = graph_url.into();
        body["authority_url"] = graph_url.into();
        for (k, v) in settings.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        self.call(Method::POST, "/v1/domains", Some(body)).await
    }
}
