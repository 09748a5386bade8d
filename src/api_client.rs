//! A small client of the engine's own API, for the CLI commands that drive a server the
//! way an admin would (`demo`, `bench sync`).

use crate::cli::CliError;
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
    ) -> Result<Value, CliError> {
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
            .map_err(|e| CliError::Other(format!("{method} {path}: {e}")))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(CliError::Other(format!("{method} {path}: {status} {body}")));
        }
        Ok(body)
    }

    /// Starts a sync run of `domain` and waits (at most `limit`) for its end; answers the
    /// run without its per-user outcomes.
    pub async fn sync_and_wait(&self, domain: &str, limit: Duration) -> Result<Value, CliError> {
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
                return Err(CliError::Other(format!("sync run {run} did not finish")));
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
    /// Starts `serve` on `data_dir` (which must be new) with extra environment variables.
    pub async fn start(
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Result<ServeProcess, CliError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("IDLEDGER_REQUEST_TIMEOUT_SECS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
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
                return Err(CliError::Other("the serve process did not come up".into()));
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
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
