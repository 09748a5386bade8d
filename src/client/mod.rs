//! A client of our own API as an admin drives it (the demo, the benchmarks, the tests),
//! a `serve` child process to drive ([`ServeProcess`]), and the contoso tenant built into
//! the binary ([`contoso`]).

pub mod contoso;
mod process;

pub use process::ServeProcess;

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
