//! `idledger bench follow`: a `backup --follow` copy kept up with a serve process that
//! takes appends at a fixed rate. The lag of each increment is the time from the append
//! of its oldest record (the record's own timestamp) to the increment being on the
//! copy's device. The baseline is the same load with no follower, in the same run: what
//! following costs the server's appends.

use super::api::{free_port, open_loop_with, percentile, quiet_serve, wait_ready, Killed};
use crate::cli::backup::{keep_following, BackupArgs};
use crate::error::Error;
use crate::store::{EventLog, SledEventLog};
use clap::Args;
use idledger_domain::{SsoMethod, SsoSettings, UserId};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `bench follow`.
#[derive(Args, Debug)]
pub struct FollowArgs {
    /// A new directory: the server's data dir and the copy go inside.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Appends per second (each a `PATCH /v1/users/{id}` that sets or clears the SSO
    /// override of a user, in turn; one user per 10 appends).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of load, for the baseline and again with the follower.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Client connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// The follower's wait, once caught up, before asking again (ms).
    #[arg(long, default_value_t = 250)]
    pub interval_ms: u64,
}

/// One phase's appends.
#[derive(serde::Serialize)]
struct Appends {
    appended: usize,
    errors: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The copy's lag over the followed phase.
#[derive(serde::Serialize)]
struct Lag {
    increments: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(serde::Serialize)]
struct Report {
    bench: &'static str,
    rate: u64,
    seconds: u64,
    baseline: Appends,
    followed: Appends,
    lag: Lag,
    copy_position: u64,
    copy_at_head: bool,
}

async fn load(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    users: &[UserId],
    args: &FollowArgs,
    // Requests sent to these users before: the turns go on from there.
    offset: u64,
) -> Appends {
    let request = |n: u64| {
        let n = n + offset;
        let user = users[(n % users.len() as u64) as usize];
        // Each request changes the override (set, then cleared): every one appends.
        let set = (n / users.len() as u64).is_multiple_of(2);
        let body = OverrideBody {
            sso_override: set.then_some(SsoSettings {
                enabled: true,
                method: SsoMethod::Passwordless,
            }),
        };
        http.patch(format!("{url}/v1/users/{user}"))
            .bearer_auth(token)
            .json(&body)
    };
    let started = Instant::now();
    let (mut ms, errors) = open_loop_with(request, args.rate, args.seconds, args.connections).await;
    let took = started.elapsed().as_secs_f64();
    ms.sort_by(|a, b| a.total_cmp(b));
    Appends {
        appended: ms.len(),
        errors,
        per_sec: super::round3((ms.len() as u64 - errors) as f64 / took),
        p50_ms: super::round3(percentile(&ms, 0.50)),
        p99_ms: super::round3(percentile(&ms, 0.99)),
    }
}

/// `PATCH /v1/users/{id}`'s body.
#[derive(serde::Serialize)]
struct OverrideBody {
    sso_override: Option<SsoSettings>,
}

/// Runs `bench follow`.
pub async fn follow(args: FollowArgs) -> Result<ExitCode, Error> {
    let data = args.data_dir.join("serve");
    let copy = args.data_dir.join("copy");
    if copy.exists() || data.exists() {
        return Err(Error::Other(format!(
            "{} holds a run already: give a new directory",
            args.data_dir.display()
        )));
    }
    // One user per 10 appends of a phase: a command reads its user's whole stream, so
    // streams are kept as short as a real tenant's.
    let count = u32::try_from((args.rate * args.seconds * 2 / 10).max(2)).unwrap_or(u32::MAX);
    let (_, users) = super::api::prepare(&data, count).await?;
    super::reopen(&data).await?;
    let token = {
        let log = SledEventLog::open(&data)?;
        let (_, token, _) = crate::server::issue_token(
            &*log,
            idledger_domain::Actor::Operator,
            idledger_domain::Role::Admin,
            "bench follow".into(),
            vec![],
        )
        .await?;
        log.flush().await?;
        token
    };
    // The writer task lets go of sled's lock shortly after the log is dropped.
    super::reopen(&data).await?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 4)
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    let _serve = Killed(quiet_serve(&data, port)?.spawn()?);
    wait_ready(&http, &url, Duration::from_secs(60)).await?;

    // Each phase has its own half of the users: a command reads its user's stream, so
    // the phases see streams of the same lengths.
    let (first_half, second_half) = users.split_at(users.len() / 2);
    let baseline = load(&http, &url, &token, first_half, &args, 0).await;
    let follower_args = BackupArgs {
        from: crate::cli::DataDir {
            data_dir: None,
            server: Some(url.clone()),
        },
        out: copy.clone(),
        follow: true,
        once: false,
        retain_days: 30.0,
        interval_ms: args.interval_ms,
        segment_records: crate::backup::follow::SEGMENT_RECORDS,
    };
    // The follower catches up with the baseline's appends first; the lag is measured
    // from the start of the followed load on.
    keep_following(
        &BackupArgs {
            once: true,
            ..follower_args.clone()
        },
        &url,
        &token,
        None,
        |_| {},
    )
    .await?;
    let measure_from = chrono::Utc::now().timestamp_micros();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut lags = Vec::new();
    let following = keep_following(&follower_args, &url, &token, Some(&done), |c| {
        if let Some(oldest) = c.oldest_taken_us().filter(|t| *t >= measure_from) {
            let now = chrono::Utc::now().timestamp_micros();
            lags.push((now - oldest) as f64 / 1000.0);
        }
    });
    let loaded = async {
        let appends = load(&http, &url, &token, second_half, &args, 0).await;
        done.store(true, std::sync::atomic::Ordering::Release);
        appends
    };
    let (followed, summary) = tokio::join!(loaded, following);
    let summary = summary?;
    lags.sort_by(|a, b| a.total_cmp(b));
    // Records the server holds past the copy (none when it kept up to the end).
    let behind = http
        .get(format!(
            "{url}/v1/events?from_position={}&limit=1",
            summary.position + 1
        ))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .json::<serde_json::Value>()
        .await
        .map_err(|e| Error::Other(e.to_string()))?["items"]
        .as_array()
        .map_or(0, Vec::len);
    let report = Report {
        bench: "follow",
        rate: args.rate,
        seconds: args.seconds,
        baseline,
        followed,
        lag: Lag {
            increments: lags.len(),
            p50_ms: super::round3(percentile(&lags, 0.50)),
            p99_ms: super::round3(percentile(&lags, 0.99)),
            max_ms: super::round3(lags.last().copied().unwrap_or(0.0)),
        },
        copy_position: summary.position,
        copy_at_head: behind == 0,
    };
    outln!(
        "{}",
        serde_json::to_string(&report).map_err(|e| Error::Other(e.to_string()))?
    )?;
    Ok(ExitCode::SUCCESS)
}
