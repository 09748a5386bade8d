//! What an operator scrapes: `/metrics` parsed by a standard Prometheus text parser, every
//! documented family present with its type, the histograms and counters moving when their
//! work happens (a sync run, a rotation and its key write, a 429 from graphsim, requests),
//! and `/readyz` answering 503 while a large log is folded at start, 200 after.

use crate::rotation::rotating_world;
use crate::support::{free_port, idledger, World};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A family the README's operator section documents.
struct Documented {
    name: String,
    kind: &'static str,
    labels: Vec<String>,
}

/// Every family the README documents (`idledger_x{a,b}` under "Histograms:", "Counters:"
/// or "Gauges read at scrape:"), read from the README itself so that the two cannot drift.
fn documented() -> Vec<Documented> {
    let readme = include_str!("../../README.md");
    let from = readme
        .find("Histograms: `idledger_")
        .expect("the metrics' list");
    let to = from
        + readme[from..]
            .find("A rotation counts once")
            .expect("its end");
    let mut kind = "histogram";
    let mut found = Vec::new();
    let mut rest = &readme[from..to];
    loop {
        let next_name = rest.find("`idledger_");
        let next_kind = [
            ("Counters:", "counter"),
            ("Gauges read at scrape:", "gauge"),
        ]
        .into_iter()
        .filter_map(|(mark, k)| rest.find(mark).map(|i| (i, k)))
        .min();
        match (next_name, next_kind) {
            (_, Some((i, k))) if next_name.is_none_or(|n| i < n) => {
                kind = k;
                rest = &rest[i + 1..];
            }
            (Some(n), _) => {
                let item = &rest[n + 1..];
                let end = item.find('`').unwrap();
                let (name, labels) = match item[..end].split_once('{') {
                    Some((name, labels)) => (
                        name,
                        labels
                            .trim_end_matches('}')
                            .split(',')
                            .map(str::to_owned)
                            .collect(),
                    ),
                    None => (&item[..end], Vec::new()),
                };
                found.push(Documented {
                    name: name.to_owned(),
                    kind,
                    labels,
                });
                rest = &item[end + 1..];
            }
            (None, _) => break,
        }
    }
    assert!(found.len() >= 28, "{} families documented", found.len());
    found
}

/// One scrape: the text, its samples parsed by `prometheus-parse`, and the declared types.
pub(crate) struct Scrape {
    samples: Vec<prometheus_parse::Sample>,
    types: HashMap<String, String>,
}

impl Scrape {
    async fn of(w: &World) -> Scrape {
        Scrape::at(&w.app.url).await
    }

    pub(crate) async fn at(url: &str) -> Scrape {
        let r = reqwest::get(format!("{url}/metrics")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = r.text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines)
            .unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{text}"));
        let types = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, t)| (n.to_owned(), t.to_owned()))
            .collect();
        Scrape {
            samples: parsed.samples,
            types,
        }
    }

    /// True when a sample of `name` has exactly `labels`.
    pub(crate) fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The sum of a counter's or gauge's samples (or a histogram's counts) whose labels
    /// include every pair of `labels`.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                let matches = labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
                matches && (s.metric == name || s.metric == format!("{name}_count"))
            })
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_name_every_documented_family_and_move_with_their_work() {
    let w = rotating_world(json!({"auto_password_change_days": 30})).await;
    // An app, so its token series exist (at zero).
    let (s, app) = w
        .admin(
            Method::POST,
            "/v1/apps",
            Some(
                json!({"name": "Payroll", "redirect_uris": ["https://payroll.contoso.com/cb"],
                        "type": "confidential", "domain_ids": [w.domain]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{app}");
    let before = Scrape::of(&w).await;
    let documented = documented();
    for d in &documented {
        assert_eq!(
            before.types.get(&d.name).map(String::as_str),
            Some(d.kind),
            "{} is not declared as a {}",
            d.name,
            d.kind
        );
    }
    let domain = "contoso.onmicrosoft.com";
    // Series an alert watches with `increase()` are there at zero before their first
    // event, or that event would go unseen.
    for class in [
        "authorization",
        "authentication",
        "request",
        "directory",
        "service",
        "other",
    ] {
        let labels = [
            ("domain", domain),
            ("outcome", "refused"),
            ("code_class", class),
        ];
        assert!(before.has("idledger_rotations_total", &labels), "{class}");
    }
    for outcome in ["quarantined", "failed", "cancelled"] {
        for kind in ["full", "delta"] {
            let labels = [("domain", domain), ("kind", kind), ("outcome", outcome)];
            assert!(
                before.has("idledger_sync_runs_total", &labels),
                "{labels:?}"
            );
        }
    }
    assert!(
        before.value(
            "idledger_sync_run_duration_seconds",
            &[("domain", domain), ("kind", "full")]
        ) >= 1.0
    );
    assert!(
        before.value(
            "idledger_users",
            &[("domain", domain), ("status", "active")]
        ) >= 1.0
    );

    // A sync run: its duration, its outcome and Graph's calls move.
    w.sync().await;
    // Graph throttles the next members page once: counted, retried, and the run succeeds.
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(
            json!({"path_prefix": "/v1.0/groups/", "status": 429, "retry_after": 0.05, "count": 1}),
        ),
    )
    .await;
    w.sync().await;
    // A rotation with its key write.
    let id = w.assign_key(2, "K-0002").await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");
    // The agent takes the write and says it is on the key; a second rotation's write is
    // superseded by a third's, which stays undelivered.
    let agent = w.app.token("agent", &["K-0002"]).await;
    let writes = w.agent_writes(&agent).await;
    let (s, body) = w.ack_written(&agent, &writes[0]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for n in 2..=3 {
        let (s, body) = w
            .admin(Method::POST, &format!("/v1/users/{id}/rotate"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        let h = w.rotations_settled(&id, n).await;
        assert!(h.iter().all(|r| r["outcome"] == "succeeded"), "{h:?}");
    }
    // A run's and a rotation's figures are recorded just after their last event, so the
    // scrape is repeated (briefly) until they show.
    let checks: &[(&str, &[(&str, &str)])] = &[
        ("idledger_sync_run_duration_seconds", &[("domain", domain)]),
        (
            "idledger_sync_runs_total",
            &[("domain", domain), ("outcome", "succeeded")],
        ),
        (
            "idledger_graph_request_duration_seconds",
            &[("status", "429")],
        ),
        ("idledger_graph_throttled_total", &[]),
        ("idledger_graph_retries_total", &[]),
        (
            "idledger_rotation_duration_seconds",
            &[("domain", domain), ("outcome", "succeeded")],
        ),
        (
            "idledger_rotations_total",
            &[("domain", domain), ("outcome", "succeeded")],
        ),
        (
            "idledger_key_writes_total",
            &[("domain", domain), ("event", "queued")],
        ),
        (
            "idledger_key_writes_total",
            &[("domain", domain), ("event", "delivered")],
        ),
        (
            "idledger_key_writes_total",
            &[("domain", domain), ("event", "acknowledged")],
        ),
        (
            "idledger_key_writes_total",
            &[("domain", domain), ("event", "superseded")],
        ),
        (
            "idledger_graph_request_duration_seconds",
            &[("operation", "user_update"), ("status", "204")],
        ),
        (
            "idledger_events_appended_total",
            &[("kind", "RotationSucceeded")],
        ),
        ("idledger_append_commit_duration_seconds", &[]),
        (
            "idledger_http_request_duration_seconds",
            &[
                ("route", "/v1/users/:id/key"),
                ("method", "PUT"),
                ("status", "2xx"),
            ],
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = Scrape::of(&w).await;
        let still: Vec<String> = checks
            .iter()
            .filter(|(name, labels)| after.value(name, labels) <= before.value(name, labels))
            .map(|(name, labels)| format!("{name}{labels:?}"))
            .collect();
        if still.is_empty() {
            break after;
        }
        assert!(Instant::now() < deadline, "did not move: {still:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        after.value("idledger_key_writes_undelivered", &[("domain", domain)]) >= 1.0,
        "the queued write is undelivered"
    );
    assert_eq!(after.value("idledger_ready", &[]), 1.0);
    // Every family carries the labels the README names, no more and no fewer.
    for d in &documented {
        for sample in after.samples.iter().filter(|s| s.metric == d.name) {
            let mut names: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
            names.sort_unstable();
            let mut want: Vec<&str> = d.labels.iter().map(String::as_str).collect();
            want.sort_unstable();
            assert_eq!(names, want, "the labels of {}", d.name);
        }
    }
    // No label carries a user id.
    for s in &after.samples {
        for v in s.labels.values() {
            assert!(!v.contains(&id), "{} carries a user id", s.metric);
        }
    }

    // OpenMetrics when asked.
    let r = reqwest::Client::new()
        .get(format!("{}/metrics", w.app.url))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(r.text().await.unwrap().ends_with("# EOF\n"));

    // A removed domain's users and waiting writes are counted no more (its name may be
    // registered again, by another domain).
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert!(s.is_success(), "{s} {body}");
    let removed = Scrape::of(&w).await;
    assert_eq!(removed.value("idledger_users", &[("domain", domain)]), 0.0);
    assert_eq!(
        removed.value("idledger_key_writes_undelivered", &[("domain", domain)]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_a_large_log_is_folded_and_200_after() {
    // 300,000 events in the data dir, written as `serve` would store them.
    let dir = tempfile::tempdir().unwrap();
    crate::support::filled_data_dir(dir.path(), 300).await;

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = idledger()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    // A client that starts a request and never finishes it, while `serve` starts: it must
    // not hold the start up.
    let mut stalled = None;
    loop {
        let status = match http.get(format!("{url}/readyz")).send().await {
            Ok(r) => Some(r.status()),
            Err(_) => None,
        };
        if status == Some(StatusCode::SERVICE_UNAVAILABLE) && stalled.is_none() {
            use tokio::io::AsyncWriteExt;
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            c.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            stalled = Some(c);
        }
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == Some(StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Ready means caught up: the projections hold the whole log.
    let health: serde_json::Value = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    drop(stalled);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains(&Some(StatusCode::SERVICE_UNAVAILABLE)),
        "no 503 while folding: {seen:?}"
    );
    assert!(
        health["projector_position"].as_u64().unwrap() >= 300_000,
        "{health}"
    );
}

/// The dashboard and the alert rules in `docs/` use documented metrics only, each under
/// the name its type gives its series (`_bucket`, `_count`, `_sum` of histograms only),
/// and group and match by labels those metrics carry: a panel that names a label a metric
/// lacks shows nothing, and would pass unseen.
#[test]
fn the_dashboard_and_the_alerts_name_documented_metrics_and_labels_only() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let dashboard = std::fs::read_to_string(docs.join("grafana-dashboard.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().unwrap().len() > 10);
    let mut expressions = Vec::new();
    collect_queries(&parsed, &mut expressions);
    let alerts = std::fs::read_to_string(docs.join("prometheus-alerts.yml")).unwrap();
    let rules: Vec<&str> = alerts.split("- alert:").skip(1).collect();
    assert!(rules.len() >= 8);
    for rule in rules {
        let expr = rule.split_once("expr:").unwrap().1;
        let end = ["for:", "annotations:"]
            .iter()
            .filter_map(|m| expr.find(m))
            .min()
            .unwrap();
        expressions.push(expr[..end].to_owned());
    }
    let documented = documented();
    let family = |name: &str| documented.iter().find(|d| d.name == name);
    let mut used = 0;
    for expr in &expressions {
        // Every metric in the expression, and the labels its series carry.
        let mut carried = vec!["job".to_owned()];
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("idledger_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let (d, bucket) = match family(&name) {
                Some(d) => (d, false),
                None => {
                    let (base, suffix) = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s).map(|b| (b, *s)))
                        .unwrap_or_else(|| panic!("{name} is not a documented metric"));
                    let d =
                        family(base).unwrap_or_else(|| panic!("{name} is not a documented metric"));
                    assert_eq!(d.kind, "histogram", "{name}: only histograms have {suffix}");
                    (d, suffix == "_bucket")
                }
            };
            let mut labels = d.labels.clone();
            labels.push("job".into());
            if bucket {
                labels.push("le".into());
            }
            if let Some(matchers) = rest.strip_prefix('{') {
                let matchers = &matchers[..matchers.find('}').unwrap()];
                for m in matchers.split(',').filter(|m| !m.trim().is_empty()) {
                    let label = m.split(['=', '!']).next().unwrap().trim();
                    assert!(
                        labels.iter().any(|l| l == label),
                        "{name} has no label {label}: {expr}"
                    );
                }
            }
            if let Some(label) = rest
                .strip_prefix(", ")
                .filter(|_| expr.contains("label_values("))
                .map(|l| l.trim_end_matches(')').trim())
            {
                assert!(
                    labels.iter().any(|l| l == label),
                    "{name} has no label {label}"
                );
            }
            carried.extend(labels);
            used += 1;
        }
        // What it groups by.
        let mut rest = expr.as_str();
        while let Some(i) = rest.find(" by (") {
            let inner = &rest[i + 5..];
            let close = inner.find(')').unwrap();
            for label in inner[..close].split(',').map(str::trim) {
                assert!(
                    carried.iter().any(|l| l == label),
                    "no metric of it has {label}: {expr}"
                );
            }
            rest = &inner[close..];
        }
    }
    assert!(used > 20, "{used}");
}

/// The dashboard's queries: every panel's `expr` and every variable's `query`.
fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match v {
                    Value::String(q)
                        if (k == "expr" || k == "query") && q.contains("idledger_") =>
                    {
                        out.push(q.clone())
                    }
                    _ => collect_queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// A rotation whose outcome stays unknown through two rounds that give up is counted once
/// as unknown, and once more under the outcome that resolves it: the figures count
/// rotations, not rounds. (A `serve` of its own: its figures are this test's alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_unknown_for_rounds_then_resolved_counts_once_per_outcome() {
    use crate::crash::{add_fault, contoso_and_data_dir, user_with_key};
    let (sim, sim_state, _dir, data) = contoso_and_data_dir().await;
    let env = [
        ("IDLEDGER_GRAPH_TIMEOUT_SECS", "1"),
        ("IDLEDGER_ROTATION_UNCERTAINTY_SECS", "1"),
    ];
    let mut serve = crate::support::Serve::start_with(&data, None, &env).await;
    let user = user_with_key(&serve, &sim, "c0a80000-0000-4000-8000-000000000003").await;
    add_fault(
        &sim,
        json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 503,
               "retry_after": 0.01, "count": 100_000}),
    )
    .await;
    serve
        .call(Method::POST, &format!("/v1/users/{user}/rotate"), None)
        .await;
    // Two rounds give up (a second after the first: the uncertainty window).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = serve
            .call(
                Method::GET,
                &format!("/v1/users/{user}/events?limit=1000"),
                None,
            )
            .await;
        let items = events["items"].as_array().unwrap();
        if items
            .iter()
            .filter(|e| e["kind"] == "RotationFailed")
            .count()
            >= 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "fewer than two rounds gave up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim_state.lock().faults.clear();
    // A later round, after the doubled window, sets the password.
    crate::crash::history_settled(&serve, &user, 1).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let scrape = loop {
        let scrape = Scrape::at(&serve.url).await;
        if scrape.value("idledger_rotation_unknown_resolved_total", &[]) >= 1.0 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "the resolution was not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let count = |name: &str, outcome: &str| scrape.value(name, &[("outcome", outcome)]);
    assert_eq!(count("idledger_rotations_total", "unknown"), 1.0);
    assert_eq!(count("idledger_rotations_total", "succeeded"), 1.0);
    assert_eq!(count("idledger_rotations_total", "refused"), 0.0);
    assert_eq!(count("idledger_rotations_total", "failed"), 0.0);
    assert_eq!(count("idledger_rotation_duration_seconds", "unknown"), 1.0);
    assert_eq!(
        count("idledger_rotation_duration_seconds", "succeeded"),
        1.0
    );
    assert_eq!(
        count("idledger_rotation_unknown_resolved_total", "succeeded"),
        1.0
    );
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
}

/// `/readyz` and `/metrics` are open to anyone who reaches the port, and each checks that
/// the data dir takes writes: a flood of them writes a file about once a second, not once
/// per request (the log's commits sync the same file system).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_probes_writes_into_the_data_dir_about_once_a_second() {
    let app = crate::support::spawn_app().await;
    let http = reqwest::Client::new();
    let before = app.state.data_dir_probe.writes();
    let started = Instant::now();
    let probes = (0..300).map(|i| {
        let path = if i % 2 == 0 { "readyz" } else { "metrics" };
        http.get(format!("{}/{path}", app.url)).send()
    });
    for r in futures_util::future::join_all(probes).await {
        assert_eq!(r.unwrap().status(), StatusCode::OK);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let writes = app.state.data_dir_probe.writes() - before;
    assert!(
        // The answer of the probe made at the start may still stand.
        writes <= seconds + 1,
        "{writes} probe files written in {seconds} s"
    );
}

/// A data dir that takes no writes (here the probe's own file name is a directory, which
/// fails whoever the tests run as) makes `/readyz` answer 503 and say why, and
/// `idledger_ready` 0; writable again, ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_takes_no_writes_is_not_ready() {
    let app = crate::support::spawn_app().await;
    let http = reqwest::Client::new();
    let readyz = async || {
        let r = http
            .get(format!("{}/readyz", app.url))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let ready_metric = async || {
        let text = http
            .get(format!("{}/metrics", app.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("idledger_ready "))
            .map(str::to_owned)
    };
    assert_eq!(readyz().await.0, StatusCode::OK);
    let blocker = app
        .dir
        .path()
        .join(format!(".readyz-{}", std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("inside"), b"x").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.to_string().contains("takes no writes"), "{body}");
    assert_eq!(ready_metric().await.as_deref(), Some("idledger_ready 0"));
    std::fs::remove_dir_all(&blocker).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(readyz().await.0, StatusCode::OK);
    assert_eq!(ready_metric().await.as_deref(), Some("idledger_ready 1"));
}

/// A dry run previews a sync and changes nothing: the sync-run series (which the alerts
/// read: a quarantine to approve, no success for an hour) count real runs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_is_not_counted_as_a_sync_run() {
    use crate::crash::{contoso_and_data_dir, contoso_domain};
    let (sim, _sim_state, _dir, data) = contoso_and_data_dir().await;
    let serve = crate::support::Serve::start_with(&data, None, &[]).await;
    // Started with no setting: acknowledged means on the device, and it says so.
    let health: Value = serve.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["durability"], "device", "{health}");
    let text = serve.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("idledger_durability{level=\"device\"} 1"),
        "{text}"
    );
    let domain = contoso_domain(&serve, &sim, json!({})).await;
    let dry = serve
        .call(
            Method::POST,
            &format!("/v1/domains/{domain}/sync?dry_run=true"),
            None,
        )
        .await;
    assert_eq!(dry["dry_run"], true, "{dry}");
    // And a real run, which is counted just after its last event: wait until every
    // finished real run shows, then compare.
    serve
        .call(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let real_runs = || async {
        let runs = serve
            .call(
                Method::GET,
                &format!("/v1/domains/{domain}/sync-runs?limit=1000"),
                None,
            )
            .await;
        let items = runs["items"].as_array().unwrap();
        assert!(items.iter().any(|r| r["dry_run"] == true), "{runs}");
        let real: Vec<_> = items.iter().filter(|r| r["dry_run"] == false).collect();
        let settled = real.iter().all(|r| r["status"] != "running");
        (real.len() as f64, settled, runs)
    };
    loop {
        // Judged only between two reads that agree and show no real run going on.
        let (real, settled, runs) = real_runs().await;
        let scrape = Scrape::at(&serve.url).await;
        let (again, still_settled, _) = real_runs().await;
        if !(settled && still_settled && again == real) {
            assert!(Instant::now() < deadline, "{runs}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let counted = scrape.value(
            "idledger_sync_runs_total",
            &[("domain", "contoso.onmicrosoft.com")],
        );
        let timed = scrape.value(
            "idledger_sync_run_duration_seconds",
            &[("domain", "contoso.onmicrosoft.com")],
        );
        if counted >= real && real >= 1.0 {
            assert_eq!(counted, real, "a dry run was counted: {runs}");
            assert_eq!(timed, real, "a dry run was timed: {runs}");
            break;
        }
        assert!(Instant::now() < deadline, "{runs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a scrape of `url` satisfies `ready`; answers it.
async fn scrape_until(url: &str, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = Scrape::at(url).await;
        if ready(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "never seen: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A user's rotations once none is pending.
async fn rotations_settled(serve: &crate::support::Serve, user: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = serve
            .call(
                Method::GET,
                &format!("/v1/users/{user}/password-history"),
                None,
            )
            .await;
        let items = h["items"].as_array().unwrap().clone();
        if items.len() >= n && items.iter().all(|r| r["outcome"] != "pending") {
            return items;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A rotation Graph refuses is counted as refused under its code's class (the series an
/// alert on missing permissions watches), the projector's apply lag is observed for the
/// events it folds, and a key write owed to an agent ages on the gauge until the agent
/// acknowledges it. (A `serve` of its own: its figures are this test's alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_the_apply_lag_and_an_owed_writes_age_are_measured() {
    use crate::crash::{add_fault, contoso_and_data_dir, user_with_key};
    let (sim, _sim_state, _dir, data) = contoso_and_data_dir().await;
    let mut serve = crate::support::Serve::start_with(&data, None, &[]).await;
    let domain = "contoso.onmicrosoft.com";
    let user = user_with_key(&serve, &sim, "c0a80000-0000-4000-8000-000000000003").await;
    let lag = "idledger_projector_apply_lag_seconds";
    let lag_sum = "idledger_projector_apply_lag_seconds_sum";
    let before = Scrape::at(&serve.url).await;

    // Graph refuses the password (403: Authorization_RequestDenied), once.
    add_fault(
        &sim,
        json!({"method": "PATCH", "path_prefix": "/v1.0/users", "status": 403, "count": 1}),
    )
    .await;
    serve
        .call(Method::POST, &format!("/v1/users/{user}/rotate"), None)
        .await;
    let h = rotations_settled(&serve, &user, 1).await;
    assert_eq!(h[0]["outcome"], "failed", "{h:?}");
    assert_eq!(h[0]["graph_code"], "Authorization_RequestDenied", "{h:?}");
    let refused = |class: &'static str| {
        [
            ("domain", domain),
            ("outcome", "refused"),
            ("code_class", class),
        ]
    };
    let scrape = scrape_until(&serve.url, "the refusal", |s| {
        s.value("idledger_rotations_total", &refused("authorization")) >= 1.0
    })
    .await;
    assert_eq!(
        scrape.value("idledger_rotations_total", &refused("authorization")),
        1.0
    );
    // Under its own class only, and as no other outcome.
    for class in [
        "none",
        "authentication",
        "request",
        "directory",
        "service",
        "other",
    ] {
        assert_eq!(
            scrape.value("idledger_rotations_total", &refused(class)),
            0.0,
            "{class}"
        );
    }
    for outcome in ["succeeded", "unknown"] {
        assert_eq!(
            scrape.value(
                "idledger_rotations_total",
                &[("domain", domain), ("outcome", outcome)]
            ),
            0.0,
            "{outcome}"
        );
    }
    assert_eq!(
        scrape.value(
            "idledger_rotation_duration_seconds",
            &[("domain", domain), ("outcome", "refused")]
        ),
        1.0
    );
    // The rotation's events were folded, each batch's wait observed.
    assert!(
        scrape.value(lag, &[]) > before.value(lag, &[]),
        "the apply lag's count did not move"
    );
    assert!(
        scrape.value(lag_sum, &[]) > before.value(lag_sum, &[]),
        "the apply lag's sum did not move"
    );

    // A rotation that succeeds queues a write for the user's key; no agent takes it yet.
    let writes = [("domain", domain)];
    let age = "idledger_key_writes_oldest_undelivered_age_seconds";
    let owed = "idledger_key_writes_undelivered";
    assert_eq!(scrape.value(owed, &writes), 0.0, "nothing owed yet");
    assert_eq!(scrape.value(age, &writes), 0.0, "nothing owed yet");
    serve
        .call(Method::POST, &format!("/v1/users/{user}/rotate"), None)
        .await;
    let h = rotations_settled(&serve, &user, 2).await;
    // Oldest first: the refused one, then this one.
    assert_eq!(h[1]["outcome"], "succeeded", "{h:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let waiting = Scrape::at(&serve.url).await;
    assert_eq!(waiting.value(owed, &writes), 1.0);
    let waited = waiting.value(age, &writes);
    assert!(
        (1.0..60.0).contains(&waited),
        "a write queued over a second ago is {waited} s old"
    );
    // Fetched by the agent, it is still owed until acknowledged (as the gauge documents:
    // the agent may have crashed before writing the key), and still ages.
    let agent = serve
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "agent", "name": "agent", "key_ids": ["K-0003"]})),
        )
        .await;
    let agent = agent["token"].as_str().unwrap().to_owned();
    let handed: Value = serve
        .http
        .get(format!("{}/v1/agent/key-writes", serve.url))
        .bearer_auth(&agent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let write = handed["items"][0].clone();
    assert!(write["id"].is_string(), "{handed}");
    let fetched = Scrape::at(&serve.url).await;
    assert_eq!(fetched.value(owed, &writes), 1.0);
    assert!(fetched.value(age, &writes) >= waited);
    let r = serve
        .http
        .post(format!(
            "{}/v1/agent/key-writes/{}/ack",
            serve.url,
            write["id"].as_str().unwrap()
        ))
        .bearer_auth(&agent)
        .json(&json!({"result": "written", "delivery": write["delivery"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // Acknowledged: nothing owed, and the domain's series stays, at zero.
    let done = scrape_until(&serve.url, "the write acknowledged", |s| {
        s.value(owed, &writes) == 0.0
    })
    .await;
    assert!(done.has(age, &writes), "the domain's series is gone");
    assert_eq!(done.value(age, &writes), 0.0);
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
}

/// With recording off (`IDLEDGER_METRICS=false`: the side `bench --metrics both` compares
/// against), nothing is recorded, the connection gauges included, though `/metrics` still
/// answers; with it on, the same scrape counts its own connection and the listener's cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_recording_off_not_even_connections_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for on in ["false", "true"] {
        let data = dir.path().join(on);
        std::fs::create_dir_all(&data).unwrap();
        let mut serve =
            crate::support::Serve::start_with(&data, None, &[("IDLEDGER_METRICS", on)]).await;
        // Requests over a kept-alive connection, and appends.
        serve.grow(3, "load").await;
        let scrape = Scrape::at(&serve.url).await;
        seen.push(
            [
                "idledger_http_connections_open",
                "idledger_http_connections_max",
                "idledger_http_request_duration_seconds",
                "idledger_events_appended_total",
            ]
            .map(|name| scrape.value(name, &[])),
        );
        serve.stop();
    }
    assert_eq!(seen[0], [0.0; 4], "recorded with recording off");
    assert!(seen[1].iter().all(|v| *v >= 1.0), "{:?}", seen[1]);
}
