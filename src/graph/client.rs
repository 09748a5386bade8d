//! The HTTP side: tokens, retries, paging.

use super::error::{GraphError, TlsProblem};
use super::types::*;
use base64::Engine;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub use crate::secrets::Secret;

/// Where and as whom to talk to Graph.
#[derive(Clone, Debug)]
pub struct GraphSettings {
    /// Identity platform authority, e.g. `https://login.microsoftonline.com`.
    pub authority_url: String,
    /// Graph service root, e.g. `https://graph.microsoft.com` (the client adds `/v1.0`).
    pub graph_url: String,
    /// Tenant id or verified domain name.
    pub tenant_id: String,
    /// App registration's client id.
    pub client_id: String,
    /// App registration's client secret.
    pub client_secret: Secret,
}

/// How requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles each attempt, with full jitter.
    pub base_delay: Duration,
    /// Longest backoff, and the longest `Retry-After` waited for (a longer one ends the
    /// request with its error: the caller retries on its own schedule).
    pub max_delay: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Whom the client trusts for TLS: the roots built into the binary (Mozilla's, through
/// webpki-roots: the same on every machine, independent of a host's CA store), plus the
/// certificates of `graph_ca_bundle` for a TLS-inspecting proxy. There is no way to turn
/// verification off.
#[derive(Clone, Default)]
pub struct GraphTrust {
    extra_roots: std::sync::Arc<[reqwest::Certificate]>,
}

impl std::fmt::Debug for GraphTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphTrust")
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl GraphTrust {
    /// The built-in roots and every certificate of a PEM bundle.
    pub fn with_pem_bundle(pem: &[u8]) -> Result<GraphTrust, String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        if certs.is_empty() {
            return Err("no CERTIFICATE block in the bundle".into());
        }
        Ok(GraphTrust {
            extra_roots: certs.into(),
        })
    }

    /// [`GraphTrust::with_pem_bundle`] of a file.
    pub fn with_pem_file(path: &std::path::Path) -> Result<GraphTrust, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::with_pem_bundle(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Certificates trusted beside the built-in roots.
    pub fn extra_roots(&self) -> usize {
        self.extra_roots.len()
    }
}

/// A request that got no answer, as a [`GraphError`]: a certificate problem named as one.
fn unanswered(url: &str, e: reqwest::Error) -> GraphError {
    match TlsProblem::of(&e) {
        Some(problem) => GraphError::Tls {
            host: host_of(url),
            problem,
        },
        None => GraphError::Transport {
            host: host_of(url),
            reason: reason(&e.without_url()),
        },
    }
}

/// An error and its causes in one line: reqwest's own text ("error sending request") says
/// little without them.
fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

/// A password PATCH that Graph confirmed.
#[derive(Debug)]
pub struct PasswordSet {
    /// An earlier try of the same call was answered 503: Graph may still act on it, with
    /// the same password, after a newer one is set.
    pub after_unavailable: bool,
}

/// A password PATCH that Graph did not confirm.
#[derive(Debug)]
pub struct PasswordNotSet {
    /// The last failure.
    pub error: GraphError,
    /// A request of this call may have reached Graph and been applied: even a definite
    /// refusal at the end does not show that the password is unchanged.
    pub maybe_applied: bool,
}

impl PasswordNotSet {
    /// The PATCH never left: the token could not be had, the connection was refused (a
    /// request cut off after it left is `maybe_applied`), the credentials were retired.
    /// Nothing can have been applied, and no refusal was heard either.
    pub fn never_sent(&self) -> bool {
        !self.maybe_applied
            && matches!(
                self.error,
                GraphError::Token { .. }
                    | GraphError::Transport { .. }
                    | GraphError::Tls { .. }
                    | GraphError::ForeignLink(_)
                    | GraphError::Retired
            )
    }
}

struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// A Graph client for one app registration in one tenant.
pub struct GraphClient {
    http: reqwest::Client,
    settings: GraphSettings,
    retry: RetryPolicy,
    page_size: u32,
    max_round_items: usize,
    token: Mutex<Option<CachedToken>>,
    /// Set when the credentials are removed or replaced (before the admin is answered).
    retired: std::sync::atomic::AtomicBool,
}

fn trim(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Scheme, host and port of a URL: where a request (and its token) would go.
fn origin(url: &str) -> Option<(String, String, Option<u16>)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((
        u.scheme().to_owned(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default(),
    ))
}

/// `link` is on `base`'s scheme, host and port, and under its path: a Graph reached
/// through a gateway at `https://gw.corp/graph` gets its token on `/graph/…` only, not on
/// the gateway's other paths. (The parser has resolved `..` and `%2e%2e` already.)
fn under_base(link: &str, base: &str) -> bool {
    let (Ok(l), Ok(b)) = (reqwest::Url::parse(link), reqwest::Url::parse(base)) else {
        return false;
    };
    let prefix = b.path().trim_end_matches('/');
    origin(link).is_some()
        && origin(link) == origin(base)
        && l.path()
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether an answer says a delta link no longer works and a full round must start over:
/// 410, or one of the codes that say so at any level of the error (GRAPH.md: `error.code`
/// or a nested `innerError.code`, which may name something else deeper down), compared
/// without case (the service has answered `SyncStateNotFound` as well as the documented
/// `syncStateNotFound`).
fn delta_expired(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::GONE
        || error_codes(&serde_json::from_slice(body).unwrap_or(Value::Null))
            .iter()
            .any(|c| {
                ["syncStateNotFound", "resyncRequired", "syncStateInvalid"]
                    .iter()
                    .any(|known| c.eq_ignore_ascii_case(known))
            })
}

/// Every `code` of Graph's error body, outermost first, through nested `innerError`s.
fn error_codes(v: &Value) -> Vec<&str> {
    let mut codes = Vec::new();
    let mut level = v.get("error");
    // Bounded: a hostile body nests as deep as serde_json allows (128 levels).
    while let Some(e) = level {
        if let Some(c) = e.get("code").and_then(Value::as_str) {
            codes.push(c);
        }
        level = e.get("innerError").or(e.get("innererror"));
    }
    codes
}

/// Parses Graph's error body; the innermost `innerError.code` wins when present (Graph's
/// advice: the most specific code), unless it only repeats the status in digits (a 429's
/// inner code is `"429"`).
fn api_error(status: StatusCode, body: &[u8], request_id: Option<String>) -> GraphError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = &v["error"];
    let codes = error_codes(&v);
    let mut code = codes
        .iter()
        .rev()
        .find(|c| !c.bytes().all(|b| b.is_ascii_digit()))
        .or(codes.first())
        .map_or_else(String::new, |c| (*c).to_owned());
    if code.is_empty() {
        code = status
            .canonical_reason()
            .unwrap_or("error")
            .replace(' ', "");
    }
    GraphError::Api {
        status: status.as_u16(),
        code: clipped(&code, 200),
        message: clipped(err["message"].as_str().unwrap_or(""), 1000),
        request_id: request_id.map(|r| clipped(&r, 100)),
        retry_after: None,
    }
}

/// The identity platform's refusal of a token request, its texts clipped.
fn token_refused(
    status: reqwest::StatusCode,
    v: &Value,
    retry_after: Option<Duration>,
) -> GraphError {
    GraphError::Token {
        retry_after,
        status: status.as_u16(),
        error: clipped(v["error"].as_str().unwrap_or("unknown"), 100),
        aadsts: v["error_codes"][0]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0),
    }
}

/// The most of a failure's text an event records (a sync run's, a rotation attempt's).
pub(crate) const MAX_RECORDED_ERROR: usize = 2000;

/// The most of one answer's body read: a page of 999 users is about a megabyte.
const MAX_BODY_BYTES: usize = 32 << 20;
/// The most of an error answer's body read: only its code and message matter.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// The most JSON values (objects, arrays and their elements) one answer may hold. Parsed,
/// a value takes 32 bytes or more, whatever its text took: `[0,0,…]` in a body of
/// [`MAX_BODY_BYTES`] would cost half a gigabyte per read, eight reads at a time. A page
/// of 999 users is some 30,000.
const MAX_BODY_VALUES: usize = 1_000_000;
/// The most pages one round reads: 100 million users at 999 a page.
const MAX_PAGES: usize = 100_000;
/// The most entries one round keeps in memory: ten times a large tenant (about a gigabyte
/// at Entra's usual sizes; each entry's texts are clipped as read, so never more than a few
/// KB each). Each page is bounded in bytes, but a server naming new pages without end (or
/// one change many times) must meet a limit before the process's memory does.
const MAX_ROUND_ITEMS: usize = 10_000_000;
/// The most empty pages one round follows in a row: far more than the runs Graph is
/// documented to send, far fewer than [`MAX_PAGES`] requests.
const MAX_EMPTY_PAGES_IN_A_ROW: usize = 10_000;
/// The longest next or delta link followed (Graph's are a few hundred bytes).
const MAX_LINK_BYTES: usize = 16 << 10;

/// `bytes` parsed, refused unread when it holds more than [`MAX_BODY_VALUES`] values:
/// counted on the text first (commas and openings outside strings), so a hostile answer
/// costs its bytes, not sixteen times them.
fn parse_bounded<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GraphError> {
    let (mut values, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => values += 1,
                _ => {}
            }
        }
    }
    if values > MAX_BODY_VALUES {
        return Err(GraphError::Decode(format!(
            "the answer holds more than {MAX_BODY_VALUES} values"
        )));
    }
    serde_json::from_slice(bytes).map_err(decode_error)
}

/// An answer's body, at most `max` bytes (a longer one is an error, not a memory bill).
/// One cut off part-way (a connection reset, the
/// request's time up) is a `Transport` failure, like an answer never received: the
/// network's fault, not Graph's words.
async fn body_of(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, GraphError> {
    let host = host_of(resp.url().as_str());
    match crate::body::at_most(resp, max).await {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Err(GraphError::Decode(format!(
            "the answer is larger than {max} bytes"
        ))),
        Err(e) => Err(GraphError::Transport {
            host,
            reason: format!("the answer was cut off: {}", reason(&e.without_url())),
        }),
    }
}

/// Sends a request for `operation`, recording its time to the answer's headers and its
/// status (`metrics`); the body is read, bounded, by the caller.
async fn timed(
    operation: &'static str,
    request: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let started = Instant::now();
    let answer = request.send().await;
    let status = answer.as_ref().ok().map(|r| r.status().as_u16());
    crate::metrics::graph_call(operation, status, started.elapsed());
    answer
}

/// `Retry-After` in seconds, possibly fractional.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let s = resp.headers().get("retry-after")?.to_str().ok()?;
    let secs: f64 = s.trim().parse().ok()?;
    // `from_secs_f64` panics past Duration's range: a peer's number never reaches it, and
    // a wait past it is simply longer than any this client makes.
    match Duration::try_from_secs_f64(secs) {
        Ok(d) => Some(d),
        Err(_) if secs > 0.0 => Some(Duration::MAX),
        Err(_) => None,
    }
}

impl GraphClient {
    /// A client with its own connection pool.
    pub fn new(
        settings: GraphSettings,
        retry: RetryPolicy,
        trust: &GraphTrust,
    ) -> Result<Self, GraphError> {
        let mut http = reqwest::Client::builder()
            // HTTPS_PROXY, ALL_PROXY and NO_PROXY are honoured (reqwest reads them).
            .tls_built_in_root_certs(true)
            // A redirect could carry the client secret or a token elsewhere: none followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(retry.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(16);
        for cert in trust.extra_roots.iter() {
            http = http.add_root_certificate(cert.clone());
        }
        // Plain http is allowed to loopback only, because nothing sent there leaves the
        // machine; a proxy would carry the secret and tokens off it in clear (reqwest
        // also proxies http by HTTP_PROXY and ALL_PROXY, loopback included).
        let plain = [&settings.graph_url, &settings.authority_url]
            .iter()
            .any(|u| {
                u.get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
            });
        if plain {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| GraphError::Decode(e.to_string()))?;
        Ok(GraphClient {
            http,
            settings,
            retry,
            page_size: 999,
            max_round_items: MAX_ROUND_ITEMS,
            token: Mutex::new(None),
            retired: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// From now on nothing is sent with these credentials: a request already on its way
    /// goes, none starts. Called before the removal or replacement is answered, so that a
    /// removed secret is never used after the admin's command returns.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the secret and tokens may still be sent: checked before either is. The URLs
    /// are checked here, where they are used, not only where they are saved: settings an
    /// earlier build saved were never checked (and a client made for them fails each run
    /// saying why, rather than not being made).
    fn still_serving(&self) -> Result<(), GraphError> {
        if self.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(GraphError::Retired);
        }
        for url in [&self.settings.graph_url, &self.settings.authority_url] {
            if idledger_domain::decide::check_service_url(url).is_err() {
                // Its origin only: an unchecked URL may carry user info (a password).
                let origin = reqwest::Url::parse(url)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_else(|_| "an unreadable URL".into());
                return Err(GraphError::InsecureUrl(origin));
            }
        }
        Ok(())
    }

    /// Page size asked of collections (`$top`, 1 to 999).
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, 999);
        self
    }

    /// The most entries one round (all its pages) may bring, `MAX_ROUND_ITEMS` unless set.
    pub fn with_max_round_items(mut self, n: usize) -> Self {
        self.max_round_items = n.max(1);
        self
    }

    fn graph(&self, path: &str) -> String {
        format!("{}/v1.0{path}", trim(&self.settings.graph_url))
    }

    /// A valid access token, from the cache or the token endpoint.
    pub async fn access_token(&self) -> Result<Secret, GraphError> {
        self.still_serving()?;
        let mut cached = self.token.lock().await;
        // Waited for the lock: retired meanwhile, maybe.
        self.still_serving()?;
        if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.token.clone());
        }
        let url = self.authority("/oauth2/v2.0/token");
        let scope = format!("{}/.default", trim(&self.settings.graph_url));
        let form = [
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.expose()),
            ("scope", scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            if attempt > 1 {
                crate::metrics::graph_retry("token");
                self.still_serving()?;
            }
            let mut delay = self.backoff(attempt);
            match timed("token", self.http.post(&url).form(&form)).await {
                // The identity platform throttles too (429) and says when to come back:
                // never sooner, and not at all within this call when that is too long.
                Ok(r)
                    if (r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS)
                        && attempt < self.retry.max_attempts
                        && retry_after(&r).is_none_or(|d| d <= self.retry.max_delay) =>
                {
                    if let Some(d) = retry_after(&r) {
                        delay = d.max(self.retry.base_delay);
                    }
                }
                Ok(r) => break r,
                Err(e) => {
                    let err = unanswered(&url, e);
                    // A certificate problem does not heal on retry: it is a setting.
                    if attempt >= self.retry.max_attempts || matches!(err, GraphError::Tls { .. }) {
                        return Err(err);
                    }
                }
            }
            tokio::time::sleep(delay).await;
        };
        let status = resp.status();
        // Kept for the caller's next try (a scheduled run, a rotation's wait) when this
        // call's own tries gave up on a long one.
        let wait = retry_after(&resp);
        let body = body_of(resp, MAX_ERROR_BODY_BYTES).await?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(token_refused(status, &v, wait));
        }
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| GraphError::Decode("token response without access_token".into()))?;
        // A peer's number: bounded (a day) before any arithmetic.
        let expires_in = v["expires_in"].as_u64().unwrap_or(3599).min(86_400);
        // Refresh five minutes early (or at half the lifetime of a short-lived token).
        let early = (expires_in / 2).min(300);
        let token = Secret::new(token);
        *cached = Some(CachedToken {
            token: token.clone(),
            refresh_at: Instant::now() + Duration::from_secs(expires_in - early),
        });
        Ok(token)
    }

    /// The application permissions granted to the app: the token's `roles` claim.
    pub async fn granted_roles(&self) -> Result<Vec<String>, GraphError> {
        let token = self.access_token().await?;
        let payload = token.expose().split('.').nth(1).unwrap_or("");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| GraphError::Decode("the access token is not a JWT".into()))?;
        let claims: Value =
            serde_json::from_slice(&bytes).map_err(|e| GraphError::Decode(e.to_string()))?;
        Ok(claims["roles"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn invalidate_token(&self) {
        *self.token.lock().await = None;
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry
            .base_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let cap = exp.min(self.retry.max_delay);
        // Full jitter, but never less than a tenth of the step: retrying at once only adds load.
        let ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms / 10..=ms))
    }

    /// Sends one request with retries; returns the successful answer's body.
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, GraphError> {
        self.send_noting(operation, method, url, body, None).await
    }

    /// [`GraphClient::send`]; with `uncertain`, for writes that must not land behind the
    /// caller's back: it is set when a try may have reached Graph and been acted on
    /// without an answer saying so (no answer after the request left, or a 5xx other than
    /// 503, Graph's "not now"), and then nothing is retried: a retry could be answered
    /// while the earlier try still lands later. The caller's own protocol retries.
    async fn send_noting(
        &self,
        operation: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
        mut uncertain: Option<&mut bool>,
    ) -> Result<Option<Value>, GraphError> {
        if !self.is_graph_link(url) {
            return Err(GraphError::ForeignLink(host_of(url)));
        }
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > 1 {
                crate::metrics::graph_retry(operation);
            }
            let token = self.access_token().await?;
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose())
                .header("client-request-id", &client_request_id);
            if let Some(b) = body {
                req = req.json(b);
            }
            let last = attempt >= self.retry.max_attempts;
            let resp = match timed(operation, req).await {
                Ok(r) => r,
                Err(e) => {
                    // A refused connection never carried the request; anything else may have.
                    let unanswered_request = !e.is_connect();
                    let err = unanswered(url, e);
                    tracing::warn!(attempt, %client_request_id, error = %err, "Graph request failed");
                    if let Some(u) = uncertain.as_deref_mut() {
                        if unanswered_request {
                            *u = true;
                            return Err(err);
                        }
                    }
                    if last || matches!(err, GraphError::Tls { .. }) {
                        return Err(err);
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
            };
            let status = resp.status();
            let request_id = resp
                .headers()
                .get("request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            tracing::debug!(%method, status = status.as_u16(), ?request_id, %client_request_id, "Graph");
            if status.is_success() {
                let bytes = match body_of(resp, MAX_BODY_BYTES).await {
                    Ok(bytes) => bytes,
                    // Graph acted (its status says so); only the answer's body was lost,
                    // which a write does not need.
                    Err(GraphError::Transport { .. }) if uncertain.is_some() => return Ok(None),
                    Err(err @ GraphError::Transport { .. }) if !last => {
                        tracing::warn!(attempt, %client_request_id, error = %err, "Graph's answer was cut off; asking again");
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                if bytes.is_empty() {
                    return Ok(None);
                }
                return parse_bounded(&bytes).map(Some);
            }
            let wait = retry_after(&resp);
            let bytes = body_of(resp, MAX_ERROR_BODY_BYTES)
                .await
                .unwrap_or_default();
            let mut err = api_error(status, &bytes, request_id.clone());
            if let GraphError::Api { retry_after, .. } = &mut err {
                *retry_after = wait;
            }
            if let Some(u) = uncertain.as_deref_mut() {
                if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                    *u = true;
                    tracing::warn!(status = status.as_u16(), ?request_id, %client_request_id, "Graph failed; the write may have been applied");
                    return Err(err);
                }
                // Graph's "not now": retried with the same body, which is safe whatever it
                // did. But nothing says a 503 was not applied, so a refusal of a later try
                // does not make the write certainly undone.
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    *u = true;
                }
            }
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // Expired or revoked token: one fresh token, then the 401 stands.
                refreshed = true;
                self.invalidate_token().await;
                continue;
            }
            if delta_expired(status, &bytes) {
                return Err(GraphError::DeltaExpired);
            }
            let transient = matches!(status.as_u16(), 429 | 503 | 504) || status.is_server_error();
            if !transient || last {
                tracing::warn!(status = status.as_u16(), code = ?err.code(), ?request_id, %client_request_id, "Graph refused");
                return Err(err);
            }
            let delay = match wait {
                // Graph said when: asking sooner only counts against the budget. Longer
                // than this client waits, the caller's next turn is the retry.
                Some(d) if d > self.retry.max_delay => {
                    tracing::warn!(
                        status = status.as_u16(),
                        ?request_id,
                        retry_after_s = d.as_secs(),
                        "Graph asks to wait longer than the client waits; giving up for now"
                    );
                    return Err(err);
                }
                // `Retry-After: 0` is no licence to retry at once.
                Some(d) => d.max(self.retry.base_delay),
                None => self.backoff(attempt),
            };
            tracing::info!(
                status = status.as_u16(),
                ?request_id,
                delay_ms = delay.as_millis() as u64,
                "Graph throttled or failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn get(&self, operation: &'static str, url: &str) -> Result<Value, GraphError> {
        self.send(operation, Method::GET, url, None)
            .await?
            .ok_or_else(|| GraphError::Decode("empty answer".into()))
    }

    /// Follows `@odata.nextLink` from `url`, calling `page` on each page's body. A link
    /// back to a page already read, a page whose entries come a third time under new links
    /// (Graph has served one groups delta page so, each time with a new link), more than
    /// [`MAX_EMPTY_PAGES_IN_A_ROW`] empty pages in a row, one link
    /// longer than [`MAX_LINK_BYTES`], or more than [`MAX_PAGES`] pages, ends the round
    /// with an error: it would otherwise never end, holding the domain's sync (and the
    /// links and pages read are kept as hashes, not as the peer's text).
    async fn pages(
        &self,
        operation: &'static str,
        url: String,
        mut page: impl FnMut(&Value) -> Result<usize, GraphError>,
    ) -> Result<Value, GraphError> {
        use sha2::{Digest, Sha256};
        let mut read: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
        let mut pages_read: std::collections::HashMap<[u8; 32], u8> =
            std::collections::HashMap::new();
        let mut next = url;
        let mut items = 0usize;
        let mut empty_in_a_row = 0usize;
        loop {
            let body = self.get(operation, &next).await?;
            // A page is known by its length and its first and last entries (cheap on pages
            // of 999 users). Graph may name an entry twice in a round, so a page may come
            // twice; a third time it is a loop.
            let entries = body["value"].as_array().map_or(&[][..], Vec::as_slice);
            // Empty pages carry nothing to know a page by, and Graph sends runs of them
            // (a delta round still working, more so filtered by id): very many in a row
            // under new links are a loop.
            empty_in_a_row = if entries.is_empty() {
                empty_in_a_row + 1
            } else {
                0
            };
            if empty_in_a_row >= MAX_EMPTY_PAGES_IN_A_ROW && body.get("@odata.nextLink").is_some() {
                return Err(GraphError::Decode(format!(
                    "more than {MAX_EMPTY_PAGES_IN_A_ROW} empty pages in a row"
                )));
            }
            if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                let ends = serde_json::to_vec(&(entries.len(), first, last))
                    .map_err(|e| GraphError::Decode(e.to_string()))?;
                let seen = pages_read
                    .entry(Sha256::digest(&ends).into())
                    .or_insert(0u8);
                *seen += 1;
                if *seen > 2 {
                    return Err(GraphError::Decode(
                        "a page of entries came again and again under new links".into(),
                    ));
                }
            }
            items = items.saturating_add(page(&body)?);
            if items > self.max_round_items {
                return Err(GraphError::Decode(format!(
                    "more than {} entries in one round",
                    self.max_round_items
                )));
            }
            read.insert(Sha256::digest(next.as_bytes()).into());
            match body["@odata.nextLink"].as_str() {
                Some(link) if link.len() > MAX_LINK_BYTES => {
                    return Err(GraphError::Decode(format!(
                        "a next page link of more than {MAX_LINK_BYTES} bytes"
                    )))
                }
                Some(link) if read.contains(&<[u8; 32]>::from(Sha256::digest(link.as_bytes()))) => {
                    return Err(GraphError::Decode(
                        "the next page link leads back to a page already read".into(),
                    ))
                }
                Some(_) if read.len() >= MAX_PAGES => {
                    return Err(GraphError::Decode(format!(
                        "more than {MAX_PAGES} pages in one round"
                    )))
                }
                // Follow the whole link as given; never rebuild it.
                Some(link) => next = link.to_owned(),
                None => return Ok(body),
            }
        }
    }

    /// The `@odata.deltaLink` of a round's last page, if it is one this client may follow
    /// later: on the Graph host and of a sane length. It is stored, and a bad one stored
    /// would fail every later run.
    fn delta_link_of(&self, last: &Value) -> Result<String, GraphError> {
        let link = last["@odata.deltaLink"].as_str().ok_or_else(|| {
            GraphError::Decode("the last delta page has no @odata.deltaLink".into())
        })?;
        if !self.is_graph_link(link) {
            return Err(GraphError::ForeignLink(host_of(link)));
        }
        if link.len() > MAX_LINK_BYTES {
            return Err(GraphError::Decode(format!(
                "a delta link of more than {MAX_LINK_BYTES} bytes"
            )));
        }
        Ok(link.to_owned())
    }

    /// `link` leads to the configured Graph base (and so may carry its token).
    pub fn is_graph_link(&self, link: &str) -> bool {
        under_base(link, &self.settings.graph_url)
    }

    /// Groups with this display name (0, 1 or several: names are not unique).
    pub async fn find_groups(&self, display_name: &str) -> Result<Vec<GraphGroup>, GraphError> {
        let filter = format!("displayName eq '{}'", display_name.replace('\'', "''"));
        let url = format!(
            "{}?$filter={}&$select=id,displayName",
            self.graph("/groups"),
            urlencoding::encode(&filter)
        );
        let mut out = Vec::new();
        self.pages("groups", url, |body| {
            let groups = parse_values::<GraphGroup>(body)?;
            let n = groups.len();
            out.extend(groups);
            Ok(n)
        })
        .await?;
        Ok(out)
    }

    /// Direct members of a group that are users, with `select`ed properties.
    pub async fn group_members(
        &self,
        group_id: &str,
        select: &str,
    ) -> Result<Vec<GraphUser>, GraphError> {
        let mut out = Vec::new();
        self.member_pages(group_id, select, |users| out.extend(users))
            .await?;
        Ok(out)
    }

    /// Which of `wanted` are direct user members of a group: the same pages as
    /// [`GraphClient::group_members`] with `$select=id`, each page kept only for the ids
    /// asked about (memory in the ids asked about, not in the group's size).
    pub async fn members_among(
        &self,
        group_id: &str,
        wanted: &std::collections::HashSet<String>,
    ) -> Result<std::collections::HashSet<String>, GraphError> {
        let mut out = std::collections::HashSet::new();
        self.member_pages(group_id, "id", |users| {
            out.extend(
                users
                    .into_iter()
                    .map(|u| u.id)
                    .filter(|id| wanted.contains(id)),
            )
        })
        .await?;
        Ok(out)
    }

    /// Every page of a group's direct user members, each handed to `take` as it arrives.
    async fn member_pages(
        &self,
        group_id: &str,
        select: &str,
        mut take: impl FnMut(Vec<GraphUser>),
    ) -> Result<(), GraphError> {
        let url = format!(
            "{}?$select={}&$top={}",
            self.graph(&format!(
                "/groups/{}/members/microsoft.graph.user",
                urlencoding::encode(group_id)
            )),
            urlencoding::encode(select),
            self.page_size
        );
        self.pages("members", url, |body| {
            let users = users_of(body)?;
            let n = users.len();
            take(users);
            Ok(n)
        })
        .await
        .map(|_| ())
    }

    /// One `groups/delta` round for `group_ids` (at most 50), from `delta_link` or from
    /// scratch. Pages are merged per group.
    pub async fn groups_delta(
        &self,
        group_ids: &[String],
        delta_link: Option<&str>,
    ) -> Result<GroupsDelta, GraphError> {
        let url = match delta_link {
            Some(link) => link.to_owned(),
            None => {
                let filter = group_ids
                    .iter()
                    .map(|id| format!("id eq '{}'", id.replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(" or ");
                format!(
                    "{}?$filter={}&$select=members",
                    self.graph("/groups/delta"),
                    urlencoding::encode(&filter)
                )
            }
        };
        let mut out = GroupsDelta::default();
        let last = self
            .pages("groups_delta", url, |body| {
                let mut kept = 0;
                for g in values(body)? {
                    kept += 1;
                    let id = object_id(&g["id"])
                        .ok_or_else(|| GraphError::Decode("a group without a valid id".into()))?;
                    let id = id.as_str();
                    if g.get("@removed").is_some() {
                        // The group itself is gone: not "no members".
                        out.removed_groups.insert(id.to_owned());
                        continue;
                    }
                    let list = out.changes.entry(id.to_owned()).or_default();
                    for m in g["members@delta"].as_array().into_iter().flatten() {
                        if m["@odata.type"]
                            .as_str()
                            .is_some_and(|t| t != "#microsoft.graph.user")
                        {
                            continue;
                        }
                        if let Some(user_id) = object_id(&m["id"]) {
                            list.push(MemberChange {
                                user_id,
                                removed: m.get("@removed").is_some(),
                            });
                            kept += 1;
                        }
                    }
                }
                Ok(kept)
            })
            .await?;
        out.delta_link = self.delta_link_of(&last)?;
        Ok(out)
    }

    /// One `users/delta` round (`select`ed properties), optionally only for `ids` (at most
    /// 50), from `delta_link` or from scratch.
    pub async fn users_delta(
        &self,
        select: &str,
        ids: Option<&[String]>,
        delta_link: Option<&str>,
    ) -> Result<UsersDelta, GraphError> {
        let url = match delta_link {
            Some(link) => link.to_owned(),
            None => {
                let mut url = format!(
                    "{}?$select={}",
                    self.graph("/users/delta"),
                    urlencoding::encode(select)
                );
                if let Some(ids) = ids {
                    let filter = ids
                        .iter()
                        .map(|id| format!("id eq '{}'", id.replace('\'', "''")))
                        .collect::<Vec<_>>()
                        .join(" or ");
                    url.push_str(&format!("&$filter={}", urlencoding::encode(&filter)));
                }
                url
            }
        };
        let mut out = UsersDelta::default();
        let last = self
            .pages("users_delta", url, |body| {
                let mut skipped = 0;
                for u in values(body)? {
                    let change = match u.get("@removed") {
                        Some(removed) => object_id(&u["id"]).map(|id| UserChange::Removed {
                            id,
                            reason: clipped(removed["reason"].as_str().unwrap_or("deleted"), 40),
                        }),
                        None => GraphUser::from_entry(u).map(UserChange::Upsert),
                    };
                    match change {
                        Some(c) => out.changes.push(c),
                        None => skipped += 1,
                    }
                }
                skipped_entries("users_delta", skipped);
                Ok(values(body)?.len() - skipped)
            })
            .await?;
        out.delta_link = self.delta_link_of(&last)?;
        Ok(out)
    }

    /// Starts tracking users from now (`$deltaToken=latest`): no users, only a delta link.
    /// Also the cheapest proof that the app may read users.
    pub async fn users_delta_latest(&self, select: &str) -> Result<String, GraphError> {
        let url = format!(
            "{}?$select={}&$deltaToken=latest",
            self.graph("/users/delta"),
            urlencoding::encode(select)
        );
        self.delta_link_of(&self.get("users_delta", &url).await?)
    }

    /// One user.
    pub async fn user(&self, id: &str, select: &str) -> Result<GraphUser, GraphError> {
        let url = format!(
            "{}?$select={}",
            self.graph(&format!("/users/{}", urlencoding::encode(id))),
            urlencoding::encode(select)
        );
        GraphUser::from_entry(&self.get("user", &url).await?)
            .filter(|u| u.id.eq_ignore_ascii_case(id))
            .ok_or_else(|| GraphError::Decode("a user without a valid id".into()))
    }

    /// Sets a user's password (no forced change at next sign-in). Tries that Graph
    /// certainly did not act on (a refused connection, 429, an expired token) are retried
    /// here, and so is a 503 (Graph's "not now"; the same body again is safe, but the write
    /// counts as possibly applied from then on); after any other try that may have been
    /// applied nothing is, and the error says so: a retry must be the caller's, recorded
    /// as such. Set, it answers whether a 503'd try came first (it may still land).
    pub async fn set_password(
        &self,
        user_id: &str,
        password: &Secret,
    ) -> Result<PasswordSet, PasswordNotSet> {
        let url = self.graph(&format!("/users/{}", urlencoding::encode(user_id)));
        let body = serde_json::json!({"passwordProfile": {
            "forceChangePasswordNextSignIn": false,
            "password": password.expose(),
        }});
        let mut maybe_applied = false;
        self.send_noting(
            "user_update",
            Method::PATCH,
            &url,
            Some(&body),
            Some(&mut maybe_applied),
        )
        .await
        .map(|_| PasswordSet {
            after_unavailable: maybe_applied,
        })
        .map_err(|error| PasswordNotSet {
            error,
            maybe_applied,
        })
    }

    /// The tenant's domains.
    pub async fn domains(&self) -> Result<Vec<GraphDomain>, GraphError> {
        let body = self.get("domains", &self.graph("/domains")).await?;
        parse_values(&body)
    }

    fn authority(&self, path: &str) -> String {
        format!(
            "{}/{}{path}",
            trim(&self.settings.authority_url),
            urlencoding::encode(&self.settings.tenant_id)
        )
    }

    /// Where to send a user's browser to sign in to Entra ID with this app registration:
    /// the authorization code flow with PKCE (S256), `openid profile email`.
    pub fn authorize_url(&self, request: &AuthorizeRequest<'_>) -> Result<String, GraphError> {
        // A user's browser, and then their password, go there.
        self.still_serving()?;
        let mut url = format!(
            "{}?client_id={}&response_type=code&response_mode=query&scope={}&redirect_uri={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            self.authority("/oauth2/v2.0/authorize"),
            urlencoding::encode(&self.settings.client_id),
            urlencoding::encode("openid profile email"),
            urlencoding::encode(request.redirect_uri),
            urlencoding::encode(request.state),
            urlencoding::encode(request.nonce),
            urlencoding::encode(request.code_challenge),
        );
        if let Some(hint) = request.login_hint {
            url.push_str("&login_hint=");
            url.push_str(&urlencoding::encode(hint));
        }
        Ok(url)
    }

    /// The tenant's OpenID Connect issuer and signing keys (JWKS bytes). The keys are read
    /// only from the authority itself: a discovery document naming another host is refused.
    pub async fn openid_keys(&self) -> Result<OpenIdKeys, GraphError> {
        let metadata = self
            .get_plain(&self.authority("/v2.0/.well-known/openid-configuration"))
            .await?;
        let issuer = metadata["issuer"]
            .as_str()
            .ok_or_else(|| GraphError::Decode("OpenID configuration without issuer".into()))?
            .to_owned();
        let jwks_uri = metadata["jwks_uri"]
            .as_str()
            .ok_or_else(|| GraphError::Decode("OpenID configuration without jwks_uri".into()))?
            .to_owned();
        if origin(&jwks_uri) != origin(&self.settings.authority_url) {
            return Err(GraphError::Decode(format!(
                "the jwks_uri {jwks_uri:?} is not on the authority's host"
            )));
        }
        let jwks = self.get_plain(&jwks_uri).await?;
        Ok(OpenIdKeys { issuer, jwks })
    }

    async fn get_plain(&self, url: &str) -> Result<Value, GraphError> {
        // The keys ID tokens are checked with: read only over a channel no one can change.
        self.still_serving()?;
        let resp = timed("openid_keys", self.http.get(url))
            .await
            .map_err(|e| unanswered(url, e))?;
        let status = resp.status();
        let body = body_of(resp, MAX_BODY_BYTES).await?;
        if !status.is_success() {
            return Err(api_error(status, &body, None));
        }
        parse_bounded(&body)
    }

    /// Redeems an authorization code for the ID token (the client secret goes to this
    /// registration's own token endpoint, nowhere else). One try: a code is single-use.
    pub async fn redeem_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<Secret, GraphError> {
        self.still_serving()?;
        let url = self.authority("/oauth2/v2.0/token");
        let form = [
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.expose()),
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", code_verifier),
            ("scope", "openid profile email"),
        ];
        let resp = timed("redeem_code", self.http.post(&url).form(&form))
            .await
            .map_err(|e| unanswered(&url, e))?;
        let status = resp.status();
        let wait = retry_after(&resp);
        let body = body_of(resp, MAX_ERROR_BODY_BYTES).await?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(token_refused(status, &v, wait));
        }
        v["id_token"]
            .as_str()
            .map(Secret::new)
            .ok_or_else(|| GraphError::Decode("token response without id_token".into()))
    }

    /// The app registration's client id (the `aud` of its ID tokens).
    pub fn client_id(&self) -> &str {
        &self.settings.client_id
    }
}

/// What an Entra sign-in asks for.
pub struct AuthorizeRequest<'a> {
    /// Where Entra sends the browser back (registered on the app).
    pub redirect_uri: &'a str,
    /// Ties the answer to this browser's request.
    pub state: &'a str,
    /// Ties the ID token to this request.
    pub nonce: &'a str,
    /// PKCE: BASE64URL(SHA-256(verifier)).
    pub code_challenge: &'a str,
    /// Pre-fills the user name.
    pub login_hint: Option<&'a str>,
}

/// A tenant's OpenID Connect issuer and its keys.
#[derive(Clone, Debug)]
pub struct OpenIdKeys {
    /// `iss` of its ID tokens.
    pub issuer: String,
    /// The JWKS document.
    pub jwks: Value,
}

fn values(body: &Value) -> Result<&Vec<Value>, GraphError> {
    body["value"]
        .as_array()
        .ok_or_else(|| GraphError::Decode("collection without value".into()))
}

fn parse_values<T: serde::de::DeserializeOwned>(body: &Value) -> Result<Vec<T>, GraphError> {
    values(body)?
        .iter()
        .map(|v| serde_json::from_value(v.clone()).map_err(decode_error))
        .collect()
}

/// The users of a collection page; entries without a valid object id are skipped.
fn users_of(body: &Value) -> Result<Vec<GraphUser>, GraphError> {
    let entries = values(body)?;
    let users: Vec<GraphUser> = entries.iter().filter_map(GraphUser::from_entry).collect();
    skipped_entries("members", entries.len() - users.len());
    Ok(users)
}

/// Says that a page held entries that were not taken (their values are not logged: they
/// are a peer's, and may be anything).
fn skipped_entries(operation: &'static str, skipped: usize) {
    if skipped > 0 {
        tracing::warn!(
            operation,
            skipped,
            "Graph entries without a valid object id were skipped"
        );
    }
}

/// A parse failure of a peer's JSON: serde quotes the offending value, which may be huge.
fn decode_error(e: serde_json::Error) -> GraphError {
    GraphError::Decode(clipped(&e.to_string(), 300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_of_too_many_values_is_refused_before_it_is_parsed() {
        let many = format!("{{\"value\":[{}0]}}", "0,".repeat(MAX_BODY_VALUES));
        match parse_bounded::<Value>(many.as_bytes()) {
            Err(GraphError::Decode(m)) => assert!(m.contains("more than"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Commas, brackets and escaped quotes inside strings are text, not values.
        let texts = format!(
            "{{\"value\":[\"{}\\\"{}\"]}}",
            ",[{".repeat(MAX_BODY_VALUES),
            ",".repeat(10)
        );
        let v: Value = parse_bounded(texts.as_bytes()).unwrap();
        assert_eq!(v["value"].as_array().unwrap().len(), 1);
    }

    fn code_of(status: u16, body: &str) -> String {
        match api_error(StatusCode::from_u16(status).unwrap(), body.as_bytes(), None) {
            GraphError::Api { code, .. } => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_most_specific_code_is_kept_but_not_a_status_in_digits() {
        let throttled = r#"{"error":{"code":"TooManyRequests","message":"m","innerError":{"code":"429","date":"2026-01-01T00:00:00"}}}"#;
        assert_eq!(code_of(429, throttled), "TooManyRequests");
        let nested = r#"{"error":{"code":"invalidRequest","innerError":{"code":"badArgument"}}}"#;
        assert_eq!(code_of(400, nested), "badArgument");
        assert_eq!(code_of(404, "not json"), "NotFound");
    }

    #[test]
    fn an_expired_delta_link_is_known_by_status_or_code_in_any_case() {
        let body = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        assert!(delta_expired(StatusCode::GONE, b""));
        for code in ["syncStateNotFound", "SyncStateNotFound", "RESYNCREQUIRED"] {
            assert!(
                delta_expired(StatusCode::BAD_REQUEST, body(code).as_bytes()),
                "{code}"
            );
        }
        assert!(!delta_expired(
            StatusCode::BAD_REQUEST,
            body("Request_BadRequest").as_bytes()
        ));
    }

    #[test]
    fn an_expired_delta_link_is_known_by_a_code_at_any_level() {
        let outer = br#"{"error":{"code":"resyncRequired","innerError":{"code":"badRequest"}}}"#;
        assert!(delta_expired(StatusCode::BAD_REQUEST, outer));
        let middle = br#"{"error":{"code":"badRequest","innerError":{"code":"syncStateNotFound","innererror":{"code":"other"}}}}"#;
        assert!(delta_expired(StatusCode::BAD_REQUEST, middle));
        let none = br#"{"error":{"code":"badRequest","innerError":{"code":"other"}}}"#;
        assert!(!delta_expired(StatusCode::BAD_REQUEST, none));
    }

    #[test]
    fn a_link_carries_the_token_only_under_the_graph_base() {
        let gw = "https://gw.corp/graph/";
        assert!(under_base(
            "https://gw.corp/graph/v1.0/groups?$skiptoken=x",
            gw
        ));
        assert!(under_base("https://GW.corp:443/graph", gw));
        for foreign in [
            "https://gw.corp/other/v1.0/groups",
            "https://gw.corp/graphx/v1.0/groups",
            "https://gw.corp/graph/../other",
            "https://gw.corp/graph/%2e%2e/other",
            "http://gw.corp/graph/v1.0/groups",
            "https://gw.corp:8443/graph/v1.0/groups",
            "https://evil.example/graph/v1.0/groups",
            "not a url",
        ] {
            assert!(!under_base(foreign, gw), "{foreign}");
        }
        let graph = "https://graph.microsoft.com";
        assert!(under_base(
            "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=a",
            graph
        ));
        assert!(!under_base(
            "https://graph.microsoft.com.evil.example/v1.0",
            graph
        ));
    }

    /// Settings saved before URLs were checked: nothing is sent to a plain-http host off the
    /// machine, and no browser is sent there either.
    #[tokio::test]
    async fn a_plain_http_url_off_the_machine_gets_nothing() {
        for (authority_url, graph_url) in [
            ("http://login.example", "https://graph.example"),
            ("https://login.example", "http://10.0.0.1"),
            (
                "https://user:hunter2@login.example",
                "https://graph.example",
            ),
        ] {
            let client = GraphClient::new(
                GraphSettings {
                    authority_url: authority_url.into(),
                    graph_url: graph_url.into(),
                    tenant_id: "t".into(),
                    client_id: "c".into(),
                    client_secret: crate::secrets::Secret::new("s"),
                },
                RetryPolicy::default(),
                &GraphTrust::default(),
            )
            .unwrap();
            let insecure = |e: GraphError| {
                matches!(&e, GraphError::InsecureUrl(_)) && !e.to_string().contains("hunter2")
            };
            assert!(client.access_token().await.is_err_and(insecure));
            assert!(client.openid_keys().await.is_err_and(insecure));
            let request = AuthorizeRequest {
                redirect_uri: "https://idledger.example/signin/entra",
                state: "s",
                nonce: "n",
                code_challenge: "c",
                login_hint: None,
            };
            assert!(client.authorize_url(&request).is_err_and(insecure));
        }
    }
}
