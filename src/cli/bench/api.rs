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
    /// Data directory (users are added when it has none).
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
        .route(
            "/v1/users/{id}",
            axum::routing::get(move || async move { axum::Json(body.clone()) }),
        );
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(ExitCode::SUCCESS)
}

/// Adds a domain and users when the data dir has none; returns a token and some user ids.
async fn prepare(data_dir: &std::path::Path) -> Result<(String, Vec<UserId>), Error> {
    let log = SledEventLog::open(data_dir)?;
    let domain = DomainId(Uuid::now_v7());
    let mut users = Vec::new();
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
    for i in 0..USERS {
        let user = UserId(Uuid::now_v7());
        let attributes = UserAttributes {
            user_principal_name: format!("user{i}@bench.onmicrosoft.com"),
            display_name: format!("Bench User {i}"),
            account_enabled: true,
            ..UserAttributes::default()
        };
        let events = vec![
            d(UserDiscovered {
                user_id: user,
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
            StreamId::user(user),
            ExpectedVersion::NoStream,
            events,
        ))
        .await?;
        users.push(user);
    }
    Ok((super::auditor_token(&log).await?, users))
}

pub(crate) fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed when dropped.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    patience: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + patience;
    while http.get(format!("{url}/healthz")).send().await.is_err() {
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
            let req = http.get(format!("{url}{}", path(sent))).bearer_auth(token);
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

/// Runs `bench api`.
pub async fn api(args: ApiArgs) -> Result<ExitCode, Error> {
    let (token, users) = prepare(&args.data_dir).await?;
    // Let the writer task release sled's lock before `serve` opens the store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exe = std::env::current_exe()?;
    let (p1, p2) = (free_port()?, free_port()?);
    let quiet = || std::process::Stdio::null();
    let _serve = Killed(
        std::process::Command::new(&exe)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{p1}"),
                "--log-format",
                "json",
                "--allow-master-key-in-data-dir",
            ])
            .arg("--data-dir")
            .arg(&args.data_dir)
            .env("IDLEDGER_LOG", "warn")
            .stdout(quiet())
            .stderr(quiet())
            .spawn()?,
    );
    let _bare = Killed(
        std::process::Command::new(&exe)
            .args([
                "bench",
                "bare-server",
                "--listen",
                &format!("127.0.0.1:{p2}"),
            ])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()?,
    );
    let (ours, bare) = (
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 4)
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    wait_healthy(&http, &ours, Duration::from_secs(60)).await?;
    wait_healthy(&http, &bare, Duration::from_secs(60)).await?;
    // Warm up both.
    closed_loop(&http, &ours, &token, &users, 1, args.connections).await;
    closed_loop(&http, &bare, &token, &users, 1, args.connections).await;
    let (mut latencies, errors) = open_loop(
        &http,
        &ours,
        &token,
        |n| format!("/v1/users/{}", users[n as usize % users.len()]),
        args.rate,
        args.seconds,
        args.connections,
    )
    .await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let max_rps = closed_loop(
        &http,
        &ours,
        &token,
        &users,
        args.seconds / 2 + 1,
        args.connections,
    )
    .await;
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
    println!(
        "{}",
        serde_json::json!({
            "bench": "api",
            "route": "GET /v1/users/{id}",
            "rate": args.rate,
            "seconds": args.seconds,
            "requests": latencies.len(),
            "errors": errors,
            "p50_ms": r3(percentile(&latencies, 0.50)),
            "p99_ms": r3(percentile(&latencies, 0.99)),
            "max_ms": r3(latencies.last().copied().unwrap_or(0.0)),
            "max_rps": max_rps.round(),
            "baseline_rps": baseline_rps.round(),
            "ratio": r3(max_rps / baseline_rps),
        })
    );
    Ok(ExitCode::SUCCESS)
}
