//! What an operator scrapes: the process's metrics, recorded where the work happens and
//! exposed at `/metrics` (`http/meta.rs`) in the Prometheus text format, or OpenMetrics
//! when the scraper asks for it.
//!
//! Recorded metrics live in one process-wide [`Recorded`] (like Prometheus clients'
//! default registry: one process is one deployment, and the store, the Graph client and
//! the services record without a handle passed down to them). What is a state rather than
//! an event (users by status, undelivered key writes, the log's head) is read from the
//! projections at scrape time instead, by [`scrape`]. **Labels are bounded**: route
//! templates, event kinds, Graph operations, status codes, domain names and app ids, never
//! a user id or free text.
//!
//! [`set_enabled`] turns recording off (for `bench`'s comparison of the cost); scrapes
//! still answer.

use idledger_domain::Event;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off (scrapes answer either way). Off, the connection gauges are
/// cleared too: `serve` answers on its port (503) while it starts, before it reads the
/// switch, and what those first connections recorded would otherwise stay on a side meant
/// to record nothing.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
    if !on {
        RECORDED.connections.set(0);
        RECORDED.connections_max.set(0);
    }
}

/// Whether recording is on.
pub fn on() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Seconds from 0.5 ms to about 65 s: requests, commits, Graph calls.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Seconds from 50 ms to about 55 min: sync runs, and rotations (an unknown outcome comes
/// after several Graph timeouts, and its resolution rounds later).
fn long() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 17))
}

/// Events per group commit: 1 to 4,096.
fn group_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

/// `method`, `route` (the template, `/v1/users/:id`), `status` (`2xx` … `5xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    method: &'static str,
    route: String,
    status: &'static str,
}

/// `kind`: an event kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// `operation` (`token`, `groups`, `members`, `delta`, `user`, `user_update` …) and
/// `status` (the HTTP status, or `none` when no answer came).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GraphLabels {
    operation: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    domain: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncOutcomeLabels {
    domain: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainOutcomeLabels {
    domain: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    domain: String,
    outcome: &'static str,
    code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyWriteLabels {
    domain: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    method: &'static str,
    /// The app's id, or `none` (the user's own page, enrolment).
    app: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    /// The app's id, or `none`.
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    app: String,
    grant: String,
    outcome: &'static str,
}

/// The recorded metrics of this process.
pub struct Recorded {
    http: Hist<HttpLabels>,
    commit: Histogram,
    group: Histogram,
    appended: Family<KindLabels, Counter>,
    apply_lag: Histogram,
    graph: Hist<GraphLabels>,
    graph_throttled: Family<OperationLabels, Counter>,
    graph_retries: Family<OperationLabels, Counter>,
    sync_duration: Hist<SyncLabels>,
    sync_runs: Family<SyncOutcomeLabels, Counter>,
    rotation_duration: Hist<DomainOutcomeLabels>,
    rotations: Family<RotationLabels, Counter>,
    unknown_resolved: Family<DomainOutcomeLabels, Counter>,
    key_writes: Family<KeyWriteLabels, Counter>,
    sign_ins: Family<SignInLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    client_auth_failures: Family<AppLabels, Counter>,
    connections: Gauge,
    connections_max: Gauge,
}

static RECORDED: LazyLock<Recorded> = LazyLock::new(|| Recorded {
    http: Family::new_with_constructor(latency),
    commit: latency(),
    group: group_sizes(),
    appended: Family::default(),
    apply_lag: latency(),
    graph: Family::new_with_constructor(latency),
    graph_throttled: Family::default(),
    graph_retries: Family::default(),
    sync_duration: Family::new_with_constructor(long),
    sync_runs: Family::default(),
    rotation_duration: Family::new_with_constructor(long),
    rotations: Family::default(),
    unknown_resolved: Family::default(),
    key_writes: Family::default(),
    sign_ins: Family::default(),
    tokens: Family::default(),
    client_auth_failures: Family::default(),
    connections: Gauge::default(),
    connections_max: Gauge::default(),
});

/// Graph operations, as the client names them.
const GRAPH_OPERATIONS: [&str; 10] = [
    "token",
    "groups",
    "members",
    "groups_delta",
    "users_delta",
    "user",
    "user_update",
    "domains",
    "openid_keys",
    "redeem_code",
];

impl Recorded {
    /// Creates the series whose labels are known (at zero), so a dashboard or an alert
    /// sees `0`, not nothing, before the first event of its kind.
    fn prime(&self, domains: &[String], apps: &[String]) {
        for operation in GRAPH_OPERATIONS {
            let labels = OperationLabels { operation };
            let _ = self.graph_throttled.get_or_create(&labels);
            let _ = self.graph_retries.get_or_create(&labels);
        }
        for domain in domains {
            for outcome in ["succeeded", "refused", "unknown"] {
                let _ = self.rotation_duration.get_or_create(&DomainOutcomeLabels {
                    domain: domain.clone(),
                    outcome,
                });
                let _ = self.rotations.get_or_create(&RotationLabels {
                    domain: domain.clone(),
                    outcome,
                    code_class: "none",
                });
            }
            // Refusals by each class Graph's codes fall in: an alert on `increase()` sees
            // a series' first refusal only when the series was there at zero before it.
            for code_class in CODE_CLASSES {
                let _ = self.rotations.get_or_create(&RotationLabels {
                    domain: domain.clone(),
                    outcome: "refused",
                    code_class,
                });
            }
        }
        for (outcome, domain) in ["succeeded", "refused"]
            .into_iter()
            .flat_map(|o| domains.iter().map(move |d| (o, d)))
        {
            let _ = self.unknown_resolved.get_or_create(&DomainOutcomeLabels {
                domain: domain.clone(),
                outcome,
            });
        }
        for event in [
            "queued",
            "delivered",
            "acknowledged",
            "failed",
            "superseded",
            "written_late",
        ] {
            for domain in domains {
                let _ = self.key_writes.get_or_create(&KeyWriteLabels {
                    domain: domain.clone(),
                    event,
                });
            }
        }
        for (method, outcome) in [
            ("passwordless", "succeeded"),
            ("password_and_second_factor", "succeeded"),
            ("passkey", "failed"),
            ("entra", "failed"),
            ("totp", "failed"),
            ("passkey", "locked"),
            ("entra", "locked"),
            ("totp", "locked"),
        ] {
            let _ = self.sign_ins.get_or_create(&SignInLabels {
                method,
                app: NO_APP.into(),
                outcome,
            });
        }
        for domain in domains {
            for kind in ["full", "delta"] {
                let _ = self.sync_duration.get_or_create(&SyncLabels {
                    domain: domain.clone(),
                    kind,
                });
                for outcome in ["succeeded", "quarantined", "failed", "cancelled"] {
                    let _ = self.sync_runs.get_or_create(&SyncOutcomeLabels {
                        domain: domain.clone(),
                        kind,
                        outcome,
                    });
                }
            }
        }
        let _ = self
            .client_auth_failures
            .get_or_create(&AppLabels { app: NO_APP.into() });
        for app in apps {
            let _ = self
                .client_auth_failures
                .get_or_create(&AppLabels { app: app.clone() });
            for (grant, outcome) in [
                ("authorization_code", "issued"),
                ("refresh_token", "issued"),
                ("", "refused"),
            ] {
                let _ = self.tokens.get_or_create(&TokenLabels {
                    app: app.clone(),
                    grant: grant.to_owned(),
                    outcome,
                });
            }
        }
    }

    /// Every recorded family in `registry`, under its documented name.
    fn register(&self, r: &mut Registry) {
        r.register(
            "idledger_http_connections_open",
            "HTTP connections open now, on every listener",
            self.connections.clone(),
        );
        r.register(
            "idledger_http_connections_max",
            "HTTP connections allowed at once per listener (max_connections); at the cap new ones wait",
            self.connections_max.clone(),
        );
        r.register(
            "idledger_http_request_duration_seconds",
            "HTTP requests by method, route template and status class",
            self.http.clone(),
        );
        r.register(
            "idledger_append_commit_duration_seconds",
            "Group commits of the log: encode, write, flush and device sync",
            self.commit.clone(),
        );
        r.register(
            "idledger_append_group_events",
            "Events per group commit",
            self.group.clone(),
        );
        r.register(
            "idledger_events_appended",
            "Events appended, by kind",
            self.appended.clone(),
        );
        r.register(
            "idledger_projector_apply_lag_seconds",
            "From an event's append to its projection",
            self.apply_lag.clone(),
        );
        r.register(
            "idledger_graph_request_duration_seconds",
            "Microsoft Graph and Entra token calls until the answer's headers (not its body), by operation and HTTP status",
            self.graph.clone(),
        );
        r.register(
            "idledger_graph_throttled",
            "Graph answers of 429 Too Many Requests, by operation",
            self.graph_throttled.clone(),
        );
        r.register(
            "idledger_graph_retries",
            "Graph calls tried again, by operation",
            self.graph_retries.clone(),
        );
        r.register(
            "idledger_sync_run_duration_seconds",
            "Sync runs, by domain and kind (full or delta)",
            self.sync_duration.clone(),
        );
        r.register(
            "idledger_sync_runs",
            "Sync runs by domain, kind and outcome (succeeded, quarantined, failed, cancelled)",
            self.sync_runs.clone(),
        );
        r.register(
            "idledger_rotation_duration_seconds",
            "Password rotations from start to outcome (succeeded, refused, unknown), by domain",
            self.rotation_duration.clone(),
        );
        r.register(
            "idledger_rotations",
            "Rotations ended, by outcome and, for refusals, the class of Graph's code",
            self.rotations.clone(),
        );
        r.register(
            "idledger_rotation_unknown_resolved",
            "Rotations whose unknown outcome was later resolved, by domain and how",
            self.unknown_resolved.clone(),
        );
        r.register(
            "idledger_key_writes",
            "Key writes queued, delivered, acknowledged, failed and superseded",
            self.key_writes.clone(),
        );
        r.register(
            "idledger_sign_ins",
            "Users' sign-ins by method (or failed factor), app (its id, or none) and outcome",
            self.sign_ins.clone(),
        );
        r.register(
            "idledger_oidc_tokens",
            "Tokens issued to and refused for apps, by app id, grant and outcome",
            self.tokens.clone(),
        );
        r.register(
            "idledger_oidc_client_auth_failures",
            "Token requests whose client authentication failed, by the app they named (its id; none: no such app)",
            self.client_auth_failures.clone(),
        );
    }
}

/// `2xx` … `5xx`.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A method as a static label (anything unusual is `other`).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A route template as a label: `/v1/users/{id}` → `/v1/users/:id`. Braces are legal in
/// a label value, but simple exposition parsers (regex-based ones among them) stop at
/// the first `}`.
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// A listener allows `max` connections at once.
pub fn connections_allowed(max: usize) {
    if on() {
        RECORDED.connections_max.set(max as i64);
    }
}

/// A connection took a slot.
pub fn connection_opened() {
    if on() {
        RECORDED.connections.inc();
    }
}

/// A connection gave its slot back. Never below zero: recording switched on while a
/// connection was open (`serve` sets the switch once, before it listens, but `bench`
/// flips it in one process) would otherwise count a close whose open went unseen.
pub fn connection_closed() {
    if on() {
        let _ =
            RECORDED
                .connections
                .inner()
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n > 0).then(|| n - 1)
                });
    }
}

/// One HTTP request answered.
pub fn http_request(method: &axum::http::Method, route: &str, status: u16, took: Duration) {
    if !on() {
        return;
    }
    RECORDED
        .http
        .get_or_create(&HttpLabels {
            method: method_label(method),
            route: route_label(route),
            status: status_class(status),
        })
        .observe(took.as_secs_f64());
}

/// One group commit of `events`, durable after `took`.
pub fn group_committed<'a>(took: Duration, events: impl ExactSizeIterator<Item = &'a Event>) {
    if !on() {
        return;
    }
    let r = &*RECORDED;
    r.commit.observe(took.as_secs_f64());
    r.group.observe(events.len() as f64);
    // Counted per kind within the group first: one family lookup per kind, not per event.
    let mut kinds: Vec<(&'static str, u64)> = Vec::new();
    for e in events {
        let kind = e.kind();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
        tokens_of(r, e);
    }
    for (kind, n) in kinds {
        r.appended.get_or_create(&KindLabels { kind }).inc_by(n);
    }
}

/// Every class [`code_class`] answers.
const CODE_CLASSES: [&str; 7] = [
    "none",
    "authorization",
    "authentication",
    "request",
    "directory",
    "service",
    "other",
];

/// The class of a Graph error code: its prefix when it is one of Graph's families
/// (`Authorization_RequestDenied` → `authorization`), else `other`; `none` without a code.
fn code_class(code: Option<&str>) -> &'static str {
    let Some(code) = code else { return "none" };
    let prefix = code.split('_').next().unwrap_or("").to_ascii_lowercase();
    match prefix.as_str() {
        "authorization" => "authorization",
        "authentication" => "authentication",
        "request" => "request",
        "directory" => "directory",
        "service" => "service",
        _ if code.eq_ignore_ascii_case("accessDenied") => "authorization",
        _ => "other",
    }
}

/// The `app` label of a sign-in or a token request for no app.
const NO_APP: &str = "none";

fn app_label(app: Option<idledger_domain::AppId>) -> String {
    app.map_or_else(|| NO_APP.to_owned(), |a| a.0.to_string())
}

/// A token request whose client authentication failed, naming `app` (if it named one).
pub fn client_authentication_failed(app: Option<idledger_domain::AppId>) {
    if !on() {
        return;
    }
    RECORDED
        .client_auth_failures
        .get_or_create(&AppLabels {
            app: app_label(app),
        })
        .inc();
}

/// Sign-ins decided and appended (for `app`, if one): counted where the app is known, not
/// from the log (the events name the app for people, by its name).
pub fn sign_ins(events: &[Event], app: Option<idledger_domain::AppId>) {
    if !on() {
        return;
    }
    for e in events {
        let (method, outcome) = match e {
            Event::SignInSucceeded(s) => (
                match s.method {
                    idledger_domain::SsoMethod::Passwordless => "passwordless",
                    idledger_domain::SsoMethod::PasswordAndSecondFactor => {
                        "password_and_second_factor"
                    }
                },
                "succeeded",
            ),
            Event::SignInFailed(f) => (f.factor.as_str(), "failed"),
            Event::SignInLocked(l) => (l.factor.as_str(), "locked"),
            _ => continue,
        };
        RECORDED
            .sign_ins
            .get_or_create(&SignInLabels {
                method,
                app: app_label(app),
                outcome,
            })
            .inc();
    }
}

/// The projector applied `e`, appended by this process: the counters of rotations and key
/// writes, which are per domain. Counted where the projections name the domain (`domain`,
/// asked only for the events counted here; `None`: the domain is gone), not where the
/// event is appended, which knows only the event.
pub fn applied_event(e: &Event, domain: impl FnOnce() -> Option<String>) {
    if !on() {
        return;
    }
    let (outcome, code_class, key_write) = match e {
        Event::RotationSucceeded(_) => ("succeeded", "none", None),
        // Given up with the outcome unknown: counted by `rotation_driven`, which knows
        // whether it was already unknown (each later round that gives up appends this too).
        Event::RotationFailed(f) if f.retryable => return,
        Event::RotationFailed(f) => ("refused", code_class(f.graph_code.as_deref()), None),
        Event::KeyWriteQueued(_) => ("", "", Some("queued")),
        Event::KeyWriteDelivered(_) => ("", "", Some("delivered")),
        Event::KeyWriteConfirmed(_) => ("", "", Some("acknowledged")),
        Event::KeyWriteFailed(_) => ("", "", Some("failed")),
        Event::KeyWriteSuperseded(_) => ("", "", Some("superseded")),
        Event::KeyWriteWrittenLate(_) => ("", "", Some("written_late")),
        _ => return,
    };
    let domain = domain_label(domain());
    let r = &*RECORDED;
    match key_write {
        Some(event) => {
            r.key_writes
                .get_or_create(&KeyWriteLabels { domain, event })
                .inc();
        }
        None => {
            r.rotations
                .get_or_create(&RotationLabels {
                    domain,
                    outcome,
                    code_class,
                })
                .inc();
        }
    }
}

/// The label of a domain by its name; one that is gone (removed while its work finished)
/// is `unknown`, one bounded value for all of them.
fn domain_label(name: Option<String>) -> String {
    name.unwrap_or_else(|| "unknown".to_owned())
}

/// The token counters an appended event stands for.
fn tokens_of(r: &Recorded, e: &Event) {
    match e {
        Event::AppTokensIssued(t) => {
            r.tokens
                .get_or_create(&TokenLabels {
                    app: t.app_id.0.to_string(),
                    grant: grant_label(&t.grant).to_owned(),
                    outcome: "issued",
                })
                .inc();
        }
        Event::AppTokenRefused(t) => {
            r.tokens
                .get_or_create(&TokenLabels {
                    app: t.app_id.0.to_string(),
                    grant: String::new(),
                    outcome: "refused",
                })
                .inc();
        }
        Event::AppTokensRevoked(t) => {
            r.tokens
                .get_or_create(&TokenLabels {
                    app: t.app_id.0.to_string(),
                    grant: "refresh_token".to_owned(),
                    outcome: "revoked",
                })
                .inc();
        }
        _ => {}
    }
}

fn grant_label(grant: &str) -> &'static str {
    match grant {
        "authorization_code" => "authorization_code",
        "refresh_token" => "refresh_token",
        _ => "other",
    }
}

/// The projector applied an event appended at `recorded_at` (wall clock).
pub fn applied(recorded_at: chrono::DateTime<chrono::Utc>) {
    if !on() {
        return;
    }
    let lag = (chrono::Utc::now() - recorded_at)
        .num_microseconds()
        .unwrap_or(0);
    RECORDED.apply_lag.observe(lag.max(0) as f64 / 1e6);
}

/// One Graph call of `operation` answered with `status` (`None`: no answer) after `took`.
pub fn graph_call(operation: &'static str, status: Option<u16>, took: Duration) {
    if !on() {
        return;
    }
    let r = &*RECORDED;
    r.graph
        .get_or_create(&GraphLabels {
            operation,
            status: status.map_or_else(|| "none".to_owned(), graph_status_label),
        })
        .observe(took.as_secs_f64());
    if status == Some(429) {
        r.graph_throttled
            .get_or_create(&OperationLabels { operation })
            .inc();
    }
}

/// A status Graph answers with as itself; any other (a proxy's, a broken peer's) by its
/// class, so the series stay few whatever comes back.
fn graph_status_label(status: u16) -> String {
    const KNOWN: [u16; 16] = [
        200, 201, 202, 204, 400, 401, 403, 404, 409, 410, 412, 429, 500, 502, 503, 504,
    ];
    match status {
        s if KNOWN.contains(&s) => s.to_string(),
        100..=599 => format!("{}xx", status / 100),
        _ => "other".to_owned(),
    }
}

/// A Graph call of `operation` is tried again.
pub fn graph_retry(operation: &'static str) {
    if on() {
        RECORDED
            .graph_retries
            .get_or_create(&OperationLabels { operation })
            .inc();
    }
}

/// A sync run of `domain` ended: `full` or delta, with `outcome`.
pub fn sync_run(domain: &str, full: bool, outcome: &'static str, took: Duration) {
    if !on() {
        return;
    }
    let kind = if full { "full" } else { "delta" };
    let r = &*RECORDED;
    r.sync_duration
        .get_or_create(&SyncLabels {
            domain: domain.to_owned(),
            kind,
        })
        .observe(took.as_secs_f64());
    r.sync_runs
        .get_or_create(&SyncOutcomeLabels {
            domain: domain.to_owned(),
            kind,
            outcome,
        })
        .inc();
}

/// A rotation reached `outcome` (`succeeded`, `refused`, `unknown`), `took` after it
/// started; `was_unknown`: it had been unknown before (a resolution). Called once per
/// outcome reached, never again for a round that leaves an unknown outcome unknown.
pub fn rotation_driven(
    domain: Option<String>,
    outcome: &'static str,
    took: Duration,
    was_unknown: bool,
) {
    if !on() {
        return;
    }
    let r = &*RECORDED;
    let labels = DomainOutcomeLabels {
        domain: domain_label(domain),
        outcome,
    };
    r.rotation_duration
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    if outcome == "unknown" {
        r.rotations
            .get_or_create(&RotationLabels {
                domain: labels.domain.clone(),
                outcome,
                code_class: "none",
            })
            .inc();
    }
    if was_unknown && outcome != "unknown" {
        r.unknown_resolved.get_or_create(&labels).inc();
    }
}

/// What is read from the state at scrape time.
#[derive(Default)]
pub struct Snapshot {
    /// The log's head position.
    pub head: u64,
    /// The projector's position.
    pub projected: u64,
    /// `device` or `process`.
    pub durability: &'static str,
    /// Ready to serve (see `/readyz`).
    pub ready: bool,
    /// Bytes free for the data dir's file system (`None`: unknown).
    pub available_bytes: Option<u64>,
    /// Users by domain name and status.
    pub users: Vec<(String, &'static str, u64)>,
    /// Per domain name: undelivered key writes and the age of the oldest, in seconds.
    pub undelivered: Vec<(String, u64, f64)>,
    /// The live domains' names.
    pub domains: Vec<String>,
    /// The live apps' ids.
    pub apps: Vec<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainStatusLabels {
    domain: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabels {
    level: &'static str,
}

fn gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    r.register(name, help, g);
}

impl Snapshot {
    fn register(&self, r: &mut Registry) {
        gauge(
            r,
            "idledger_log_head_position",
            "Position of the log's last durable event",
            self.head as i64,
        );
        gauge(
            r,
            "idledger_projector_position",
            "Position the projections include",
            self.projected as i64,
        );
        gauge(
            r,
            "idledger_projector_lag_events",
            "Events appended but not yet projected",
            self.head.saturating_sub(self.projected) as i64,
        );
        gauge(
            r,
            "idledger_ready",
            "1 when /readyz answers 200",
            i64::from(self.ready),
        );
        let durability = Family::<LevelLabels, Gauge>::default();
        durability
            .get_or_create(&LevelLabels {
                level: self.durability,
            })
            .set(1);
        r.register(
            "idledger_durability",
            "How far an acknowledged append has gone (device: fdatasync; process: sled's flush only)",
            durability,
        );
        if let Some(bytes) = self.available_bytes {
            gauge(
                r,
                "idledger_data_dir_available_bytes",
                "Bytes free for the data dir",
                bytes as i64,
            );
        }
        let users = Family::<DomainStatusLabels, Gauge>::default();
        for (domain, status, n) in &self.users {
            users
                .get_or_create(&DomainStatusLabels {
                    domain: domain.clone(),
                    status,
                })
                .set(*n as i64);
        }
        r.register("idledger_users", "Users by domain and status", users);
        let count = Family::<DomainLabels, Gauge>::default();
        let age = Family::<DomainLabels, Gauge<f64, AtomicU64>>::default();
        for (domain, n, oldest) in &self.undelivered {
            let labels = DomainLabels {
                domain: domain.clone(),
            };
            count.get_or_create(&labels).set(*n as i64);
            age.get_or_create(&labels).set(*oldest);
        }
        r.register(
            "idledger_key_writes_undelivered",
            "Key writes queued or delivered but not acknowledged, by domain",
            count,
        );
        r.register(
            "idledger_key_writes_oldest_undelivered_age_seconds",
            "Age of the oldest unacknowledged key write, by domain",
            age,
        );
    }
}

/// The exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format a scraper's `Accept` header asks for.
    pub fn of_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Every metric, recorded and read, in `format`.
pub fn scrape(snapshot: &Snapshot, format: Format) -> String {
    let mut registry = Registry::default();
    RECORDED.prime(&snapshot.domains, &snapshot.apps);
    RECORDED.register(&mut registry);
    snapshot.register(&mut registry);
    let mut out = String::new();
    let encoded = match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    // Writing into a String cannot fail; an error would be a bug in the encoder.
    if let Err(e) = encoded {
        tracing::error!(error = %e, "metrics could not be encoded");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_statuses_are_labelled_from_a_bounded_set() {
        assert_eq!(graph_status_label(429), "429");
        assert_eq!(graph_status_label(418), "4xx");
        assert_eq!(graph_status_label(599), "5xx");
        assert_eq!(graph_status_label(999), "other");
        let labels: std::collections::HashSet<String> =
            (0..=u16::MAX).map(graph_status_label).collect();
        assert!(labels.len() <= 24, "{labels:?}");
    }

    #[test]
    fn route_templates_become_brace_free_labels() {
        assert_eq!(route_label("/v1/users/{id}/key"), "/v1/users/:id/key");
        assert_eq!(route_label("/healthz"), "/healthz");
    }

    #[test]
    fn graph_codes_fall_into_few_classes() {
        assert_eq!(
            code_class(Some("Authorization_RequestDenied")),
            "authorization"
        );
        assert_eq!(code_class(Some("Request_BadRequest")), "request");
        assert_eq!(code_class(Some("accessDenied")), "authorization");
        assert_eq!(code_class(Some("<script>x")), "other");
        assert_eq!(code_class(None), "none");
    }

    #[test]
    fn both_formats_name_every_family_with_its_type() {
        let snapshot = Snapshot {
            head: 3,
            projected: 2,
            durability: "device",
            ready: true,
            available_bytes: Some(10),
            users: vec![("contoso.com".into(), "active", 2)],
            undelivered: vec![("contoso.com".into(), 1, 4.5)],
            domains: vec!["contoso.com".into()],
            apps: vec![],
        };
        let text = scrape(&snapshot, Format::Prometheus);
        assert!(text.contains("# TYPE idledger_users gauge"), "{text}");
        assert!(text.contains("idledger_users{domain=\"contoso.com\",status=\"active\"} 2"));
        assert!(text.contains("# TYPE idledger_projector_lag_events gauge"));
        assert!(!text.contains("# EOF"));
        // Known series exist at zero before their first event.
        assert!(
            text.contains(
                "idledger_key_writes_total{domain=\"contoso.com\",event=\"superseded\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE idledger_sync_runs_total counter"));
        let open = scrape(&snapshot, Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
    }

    #[test]
    fn a_rotation_unknown_for_minutes_lands_in_a_finite_bucket() {
        let snapshot = Snapshot {
            head: 0,
            projected: 0,
            durability: "device",
            ready: true,
            available_bytes: None,
            users: vec![],
            undelivered: vec![],
            domains: vec![],
            apps: vec![],
        };
        // Ten minutes: several Graph timeouts and a round of the scheduler.
        rotation_driven(
            Some("contoso.example".into()),
            "unknown",
            Duration::from_secs(600),
            false,
        );
        let text = scrape(&snapshot, Format::Prometheus);
        let finite = text
            .lines()
            .filter(|l| l.starts_with("idledger_rotation_duration_seconds_bucket{"))
            .filter(|l| l.contains("outcome=\"unknown\"") && !l.contains("+Inf"))
            .any(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"));
        assert!(finite, "{text}");
    }
}
