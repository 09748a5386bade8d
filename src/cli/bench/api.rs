//! `idledger bench api`: `GET /v1/users/{id}` on a real `serve` process, against a bare axum
//! handler (another process) in the same run. Load comes from this process: a fixed-rate
//! (open-loop) phase for latency, measured from each request's scheduled time so a slow
//! server cannot hide its queueing, then a closed-loop phase for the highest throughput.

use crate::error::Error;
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use clap::Args;
use idledger_domain::events::{DomainRegistered, UserDiscovered, UserImported};
use idledger_domain::*;
use std::path::PathBuf;
use std::process::{Child, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Options of `idledger bench api`.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Data directory: a domain of 1,000 users and a token are added to it on each run, so
    /// give a fresh one to compare runs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Requests per second of the fixed-rate phase.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Serve over plain HTTP (`off`), HTTPS (`on`), or both, one after the other on the
    /// same data dir, with the ratio of their throughputs (`both`).
    #[arg(long, default_value = "off", value_parser = ["off", "on", "both"])]
    pub tls: String,
    /// `serve` records metrics (`on`), does not (`off`), or both, alternating on the same
    /// data dir (plain HTTP), with the ratio of their throughputs (`both`).
    #[arg(long, default_value = "on", value_parser = ["off", "on", "both"])]
    pub metrics: String,
}

/// Options of the hidden `idledger bench bare-server`.
#[derive(Args, Debug)]
pub struct BareArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: String,
}

const USERS: u32 = 1000;

/// A bare axum handler answering a user-sized JSON body: the baseline.
pub async fn bare_server(args: BareArgs) -> Result<ExitCode, Error> {
    let body = serde_json::json!({
        "id": Uuid::nil(), "domain_id": Uuid::nil(), "external_id": Uuid::nil().to_string(),
        "user_principal_name": "user@bench.onmicrosoft.com", "display_name": "Bench User", "mail": null,
        "given_name": null, "surname": null, "account_enabled": true, "status": "active", "in_sync_group": true,
        "in_rotation_group": false, "sso": {"enabled": false, "method": "passwordless"}, "sso_override": null,
        "pc_unlock": true, "key_id": null, "last_rotation_at": null, "needs_attention": false, "invited_at": null,
        "discovered_at": "2026-01-01T00:00:00Z", "imported_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "version": 2,
    });
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route(
            "/v1/users/{id}",
            axum::routing::get(move || async move { axum::Json(body.clone()) }),
        );
    use axum::serve::ListenerExt;
    // As `serve` does: no Nagle.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app).await?;
    Ok(ExitCode::SUCCESS)
}

/// Adds a domain of `count` imported users and an auditor token to `data_dir`; answers
/// the token and the users.
pub(crate) async fn prepare(
    data_dir: &std::path::Path,
    count: u32,
) -> Result<(String, Vec<UserId>), Error> {
    let log = SledEventLog::open(data_dir)?;
    let domain = DomainId(Uuid::now_v7());
    let d = |e: Event| ProposedEvent::new(Uuid::now_v7(), Actor::Operator, e);
    log.append(AppendRequest::new(
        StreamId::domain(domain),
        ExpectedVersion::NoStream,
        vec![d(DomainRegistered {
            domain_id: domain,
            name: "bench.onmicrosoft.com".into(),
            settings: DomainSettings::default(),
        }
        .into())],
    ))
    .await?;
    let users: Vec<UserId> = (0..count).map(|_| UserId(Uuid::now_v7())).collect();
    // Many appends in flight at once: they share the writer's group commits.
    for (batch, chunk) in users.chunks(256).enumerate() {
        let appends = chunk.iter().enumerate().map(|(j, user)| {
            let i = batch * 256 + j;
            let attributes = UserAttributes {
                user_principal_name: format!("user{i}@bench.onmicrosoft.com"),
                display_name: format!("Bench User {i}"),
                account_enabled: true,
                ..UserAttributes::default()
            };
            let events = vec![
                d(UserDiscovered {
                    user_id: *user,
                    domain_id: domain,
                    external_id: Uuid::new_v4().to_string(),
                    attributes,
                }
                .into()),
                d(UserImported {
                    sso: SsoSettings::default(),
                }
                .into()),
            ];
            log.append(AppendRequest::new(
                StreamId::user(*user),
                ExpectedVersion::NoStream,
                events,
            ))
        });
        for appended in futures_util::future::join_all(appends).await {
            appended?;
        }
    }
    Ok((super::auditor_token(&log).await?, users))
}

pub(crate) fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `serve` of this binary on `data_dir` at `127.0.0.1:port`, quiet (JSON log, warnings
/// only, to nowhere): how every bench starts the engine it measures.
pub(crate) fn quiet_serve(
    data_dir: &std::path::Path,
    port: u16,
) -> Result<std::process::Command, Error> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "json", "--allow-master-key-in-data-dir"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("IDLEDGER_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Ok(cmd)
}

/// A child process killed when dropped.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    patience: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + patience;
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            return Err(Error::Other(format!("{url} did not start")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Fixed-rate load: dispatched in 1 ms ticks (tokio's timer granularity), each tick sending
/// its share of the rate. Latency runs from the tick's wake-up, so waiting for a free
/// connection counts (no coordinated omission) but the timer's own lateness does not.
/// `path(n)` is the n-th request's path.
pub(crate) async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    path: impl Fn(u64) -> String,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> (Vec<f64>, u64) {
    let request = |n| http.get(format!("{url}{}", path(n))).bearer_auth(token);
    open_loop_with(request, rate, seconds, connections).await
}

/// [`open_loop`] of any request: `request(n)` is the n-th.
pub(crate) async fn open_loop_with(
    request: impl Fn(u64) -> reqwest::RequestBuilder,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> (Vec<f64>, u64) {
    let total = rate * seconds;
    let gate = Arc::new(tokio::sync::Semaphore::new(connections * 4));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let woke = Instant::now();
        // Requests due by now, from the start: the schedule catches up after any stall.
        let due = ((woke - start).as_secs_f64() * rate as f64).ceil() as u64;
        while sent < due.min(total) {
            let permit = gate.clone().acquire_owned().await;
            let req = request(sent);
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let ok = match req.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                (woke.elapsed().as_secs_f64() * 1000.0, ok)
            }));
            sent += 1;
        }
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        if let Ok((ms, ok)) = t.await {
            latencies.push(ms);
            errors += u64::from(!ok);
        }
    }
    (latencies, errors)
}

/// Closed-loop load: the highest requests/s `connections` callers reach.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    users: &[UserId],
    seconds: u64,
    connections: usize,
) -> f64 {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (http, url, token, users) = (
            http.clone(),
            url.to_owned(),
            token.to_owned(),
            users.to_vec(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let u = users[(c + n as usize) % users.len()];
                if let Ok(r) = http
                    .get(format!("{url}/v1/users/{u}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    if r.status().is_success() && r.bytes().await.is_ok() {
                        n += 1;
                    }
                }
            }
            n
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap_or(0);
    }
    done as f64 / started.elapsed().as_secs_f64()
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// One `serve`'s figures: the fixed-rate phase's latencies, then the closed loop's rate.
struct Measured {
    scheme: &'static str,
    requests: usize,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    max_rps: f64,
}

impl Measured {
    /// The mean of runs of one scheme (`None` for none).
    fn mean(runs: Vec<Measured>) -> Option<Measured> {
        let n = runs.len() as f64;
        let first = runs.first()?;
        let avg = |f: fn(&Measured) -> f64| runs.iter().map(f).sum::<f64>() / n;
        Some(Measured {
            scheme: first.scheme,
            requests: runs.iter().map(|r| r.requests).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            p50_ms: avg(|r| r.p50_ms),
            p99_ms: avg(|r| r.p99_ms),
            max_ms: runs.iter().map(|r| r.max_ms).fold(0.0, f64::max),
            max_rps: avg(|r| r.max_rps),
        })
    }

    fn json(&self) -> serde_json::Value {
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "scheme": self.scheme,
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": r3(self.p50_ms),
            "p99_ms": r3(self.p99_ms),
            "max_ms": r3(self.max_ms),
            "max_rps": self.max_rps.round(),
        })
    }
}

/// The certificate `serve` gets for `--tls`: from a CA made for this run, which the load
/// generator's client trusts.
struct BenchTls {
    cert: PathBuf,
    key: PathBuf,
    ca_pem: String,
}

impl BenchTls {
    /// Writes the pair into `dir`.
    fn new(dir: &std::path::Path) -> Result<BenchTls, Error> {
        let tls = |e: graphsim::tls::TlsError| Error::Other(e.to_string());
        let ca = graphsim::tls::TestCa::new("idledger bench CA").map_err(tls)?;
        let leaf = ca.issue(&["localhost"]).map_err(tls)?;
        std::fs::create_dir_all(dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &leaf.cert_pem)?;
        // A fresh key each run; the file is created 0600 and never overwritten in place.
        let _ = std::fs::remove_file(&key);
        crate::secrets::write_private(&key, leaf.key_pem.as_bytes())
            .map_err(|e| Error::Other(e.to_string()))?;
        Ok(BenchTls {
            cert,
            key,
            ca_pem: ca.cert_pem(),
        })
    }
}

/// Starts `serve` on `data_dir` (over HTTPS with `tls`), measures it, and stops it.
async fn measure_serve(
    args: &ApiArgs,
    token: &str,
    users: &[UserId],
    tls: Option<&BenchTls>,
    metrics: bool,
) -> Result<Measured, Error> {
    let port = free_port()?;
    let mut cmd = quiet_serve(&args.data_dir, port)?;
    cmd.env("IDLEDGER_METRICS", metrics.to_string());
    let mut http = reqwest::Client::builder().pool_max_idle_per_host(args.connections * 4);
    let url = match tls {
        None => format!("http://127.0.0.1:{port}"),
        Some(t) => {
            cmd.arg("--tls-cert")
                .arg(&t.cert)
                .arg("--tls-key")
                .arg(&t.key);
            let ca = reqwest::Certificate::from_pem(t.ca_pem.as_bytes())
                .map_err(|e| Error::Other(e.to_string()))?;
            http = http.add_root_certificate(ca);
            format!("https://localhost:{port}")
        }
    };
    let http = http.build().map_err(|e| Error::Other(e.to_string()))?;
    let serve = Killed(cmd.spawn()?);
    wait_ready(&http, &url, Duration::from_secs(60)).await?;
    closed_loop(&http, &url, token, users, 1, args.connections).await;
    let (mut latencies, errors) = open_loop(
        &http,
        &url,
        token,
        |n| format!("/v1/users/{}", users[n as usize % users.len()]),
        args.rate,
        args.seconds,
        args.connections,
    )
    .await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let max_rps = closed_loop(
        &http,
        &url,
        token,
        users,
        args.seconds / 2 + 1,
        args.connections,
    )
    .await;
    drop(serve);
    // The next `serve` opens the same data dir: the killed one's lock must be gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Measured {
        scheme: if tls.is_some() { "https" } else { "http" },
        requests: latencies.len(),
        errors,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        max_rps,
    })
}

/// Runs `bench api`.
pub async fn api(args: ApiArgs) -> Result<ExitCode, Error> {
    let (token, users) = prepare(&args.data_dir, USERS).await?;
    // Let the writer task release sled's lock before `serve` opens the store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exe = std::env::current_exe()?;
    let bare_port = free_port()?;
    let _bare = Killed(
        std::process::Command::new(&exe)
            .args([
                "bench",
                "bare-server",
                "--listen",
                &format!("127.0.0.1:{bare_port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let bare = format!("http://127.0.0.1:{bare_port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 4)
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    wait_ready(&http, &bare, Duration::from_secs(60)).await?;
    closed_loop(&http, &bare, &token, &users, 1, args.connections).await;
    let certificate = match args.tls.as_str() {
        "off" => None,
        _ => Some(BenchTls::new(&args.data_dir.join("bench-tls"))?),
    };
    // `both` runs plain, TLS, TLS, plain (or metrics on, off, off, on) and averages each
    // pair, so a drift of the machine over the run (page cache, clocks) weighs on both alike.
    let metrics_on = args.metrics != "off";
    let order: Vec<(bool, bool)> = match (args.tls.as_str(), args.metrics.as_str()) {
        (tls, "both") => {
            let t = tls == "on";
            vec![(t, true), (t, false), (t, false), (t, true)]
        }
        ("off", _) => vec![(false, metrics_on)],
        ("on", _) => vec![(true, metrics_on)],
        _ => vec![
            (false, metrics_on),
            (true, metrics_on),
            (true, metrics_on),
            (false, metrics_on),
        ],
    };
    let mut plain = Vec::new();
    let mut secure = Vec::new();
    let mut unmetered = Vec::new();
    for &(over_tls, metrics) in &order {
        let m = measure_serve(
            &args,
            &token,
            &users,
            certificate.as_ref().filter(|_| over_tls),
            metrics,
        )
        .await?;
        if args.metrics == "both" && !metrics {
            unmetered.push(m);
        } else if over_tls {
            secure.push(m);
        } else {
            plain.push(m);
        }
    }
    let runs: Vec<Measured> = [plain, secure]
        .into_iter()
        .filter_map(Measured::mean)
        .collect();
    let baseline_rps = closed_loop(
        &http,
        &bare,
        &token,
        &users,
        args.seconds / 2 + 1,
        args.connections,
    )
    .await;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    // The first run's figures stay at the top level, as before `--tls` existed.
    let first = &runs[0];
    let mut report = first.json();
    report["bench"] = "api".into();
    report["route"] = "GET /v1/users/{id}".into();
    report["rate"] = args.rate.into();
    report["seconds"] = args.seconds.into();
    report["baseline_rps"] = baseline_rps.round().into();
    report["ratio"] = r3(first.max_rps / baseline_rps).into();
    if let [plain, tls] = &runs[..] {
        report["tls"] = tls.json();
        report["tls_ratio"] = r3(tls.max_rps / plain.max_rps).into();
        report["tls_p99_ms"] = r3(tls.p99_ms).into();
    }
    report["metrics"] = args.metrics.clone().into();
    if let Some(off) = Measured::mean(unmetered) {
        report["metrics_ratio"] = r3(first.max_rps / off.max_rps).into();
        report["metrics_off"] = off.json();
    }
    outln!("{report}")?;
    Ok(ExitCode::SUCCESS)
}
