//! `idledger bench console`: the console's pages on a `serve` process holding a domain of
//! N imported users and N candidates. Each page is what a browser asks for it: the frame,
//! then the API calls its script makes, through a real session cookie. Latency is measured
//! per request from this process on loopback (an upper bound of the server's time), and
//! per page as the sum of its requests.

use super::api::{free_port, percentile, quiet_serve, wait_ready, Killed};
use crate::error::Error;
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use clap::Args;
use futures_util::stream::{self, StreamExt};
use idledger_domain::events::{
    DomainRegistered, KeyAssigned, RotationGroupJoined, UserDiscovered, UserImported,
};
use idledger_domain::*;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Options of `idledger bench console`.
#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// A new data directory: the bench fills it.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Imported users, and as many candidates.
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// Loads of each page.
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
}

/// A domain with `n` imported users (every tenth with a key in the rotation group, so the
/// rotation schedule is not empty) and `n` candidates; answers the domain, a user, and an
/// admin token.
async fn fill(data_dir: &std::path::Path, n: u32) -> Result<(DomainId, UserId, String), Error> {
    let log = SledEventLog::open(data_dir)?;
    if log.head().position > 0 {
        return Err(Error::Other(format!(
            "{}: not a new data dir (bench console fills its own)",
            data_dir.display()
        )));
    }
    let domain = DomainId(Uuid::now_v7());
    let d = |e: Event| ProposedEvent::new(Uuid::now_v7(), Actor::Operator, e);
    log.append(AppendRequest::new(
        StreamId::domain(domain),
        ExpectedVersion::NoStream,
        vec![d(DomainRegistered {
            domain_id: domain,
            name: "bench.onmicrosoft.com".into(),
            settings: DomainSettings {
                auto_password_change_days: Some(30),
                ..DomainSettings::default()
            },
        }
        .into())],
    ))
    .await?;
    let users: Vec<(u32, UserId)> = (0..2 * n).map(|i| (i, UserId(Uuid::now_v7()))).collect();
    let first = users[0].1;
    let bar = super::progress::bar(Some(u64::from(2 * n)), "users");
    let results: Vec<Result<(), Error>> = stream::iter(users)
        .map(|(i, user)| {
            let log = log.clone();
            let bar = bar.clone();
            async move {
                let attributes = UserAttributes {
                    user_principal_name: format!("user{i}@bench.onmicrosoft.com"),
                    display_name: format!("Bench User {i}"),
                    account_enabled: true,
                    ..UserAttributes::default()
                };
                let mut events = vec![d(UserDiscovered {
                    user_id: user,
                    domain_id: domain,
                    external_id: Uuid::new_v4().to_string(),
                    attributes,
                }
                .into())];
                if i < n {
                    events.push(d(UserImported {
                        sso: SsoSettings::default(),
                    }
                    .into()));
                    if i % 10 == 0 {
                        events.push(d(RotationGroupJoined {}.into()));
                        events.push(d(KeyAssigned {
                            key_id: KeyId(format!("K-{i}")),
                        }
                        .into()));
                    }
                }
                log.append(AppendRequest::new(
                    StreamId::user(user),
                    ExpectedVersion::NoStream,
                    events,
                ))
                .await?;
                bar.inc(1);
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    bar.finish_and_clear();
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    let (_, token, _) = crate::server::issue_token(
        &*log,
        Actor::Operator,
        Role::Admin,
        "bench console".into(),
        vec![],
    )
    .await?;
    log.flush().await?;
    Ok((domain, first, token))
}

/// The log's head position, as `/healthz` tells it.
async fn head_position(http: &reqwest::Client, url: &str) -> Result<u64, Error> {
    let other = |e: reqwest::Error| Error::Other(e.to_string());
    let health: serde_json::Value = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .map_err(other)?
        .json()
        .await
        .map_err(other)?;
    health["head_position"]
        .as_u64()
        .ok_or_else(|| Error::Other("/healthz has no head_position".into()))
}

/// A session cookie from the sign-in form, as a browser gets one.
async fn sign_in(http: &reqwest::Client, url: &str, token: &str) -> Result<String, Error> {
    let other = |e: reqwest::Error| Error::Other(e.to_string());
    let page = http.get(format!("{url}/")).send().await.map_err(other)?;
    let pre_cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let html = page.text().await.map_err(other)?;
    let pre = html
        .split("name=\"pre\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_owned();
    let r = http
        .post(format!("{url}/console/sign-in"))
        .header("cookie", pre_cookie)
        .form(&[("token", token), ("pre", pre.as_str())])
        .send()
        .await
        .map_err(other)?;
    r.headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| Error::Other(format!("sign-in answered {}", r.status())))
}

/// Runs `bench console`.
pub async fn console(args: ConsoleArgs) -> Result<ExitCode, Error> {
    let (domain, user, token) = fill(&args.data_dir, args.users).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = free_port()?;
    let _serve = Killed(quiet_serve(&args.data_dir, port)?.spawn()?);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    wait_ready(&http, &url, Duration::from_secs(600)).await?;
    let cookie = sign_in(&http, &url, &token).await?;
    let (d, u) = (domain.0, user.0);
    let last = 2 * args.users - 1;
    let head = head_position(&http, &url).await?;
    // A past state halfway down the log: every user is there, half of them imported.
    let half = head / 2;
    let pages: Vec<(&str, Vec<String>)> = vec![
        (
            "domains",
            vec![
                "/console/domains".into(),
                "/v1/domains?limit=100&removed=false".into(),
            ],
        ),
        (
            "users",
            vec![
                "/console/users".into(),
                "/v1/domains?limit=1000".into(),
                "/v1/users?limit=50".into(),
            ],
        ),
        // The baseline, in the same run: how the page found its due dates before each
        // user carried `next_rotation_at` (every due date of the domain, 1,000 of them).
        (
            "users (before: due dates from rotations/upcoming)",
            vec![
                "/console/users".into(),
                "/v1/domains?limit=1000".into(),
                "/v1/rotations/upcoming?within_days=3650&limit=1000".into(),
                "/v1/users?limit=50".into(),
            ],
        ),
        // Filters without a search walk the users in id order until a page is full: a
        // status few users have walks them all.
        (
            "users filtered by domain",
            vec![format!("/v1/users?limit=50&domain={d}")],
        ),
        (
            "users filtered by status, most have it",
            vec!["/v1/users?limit=50&status=active".into()],
        ),
        (
            "users filtered by status, none have it",
            vec!["/v1/users?limit=50&status=deactivated".into()],
        ),
        (
            "users search",
            vec![format!("/v1/users?limit=50&q=user{last}")],
        ),
        // Every name holds it: the most users a search can look at.
        (
            "users search, all match",
            vec!["/v1/users?limit=50&q=bench".into()],
        ),
        (
            "import",
            vec![
                format!("/console/domains/{d}/import"),
                format!("/v1/domains/{d}"),
                format!("/v1/domains/{d}/candidates?limit=50"),
            ],
        ),
        (
            "import search",
            vec![format!("/v1/domains/{d}/candidates?limit=50&q=user{last}")],
        ),
        (
            "import search, all match",
            vec![format!("/v1/domains/{d}/candidates?limit=50&q=bench")],
        ),
        (
            "domain",
            vec![
                format!("/console/domains/{d}"),
                format!("/v1/domains/{d}"),
                format!("/v1/domains/{d}/sync-runs?limit=20"),
                format!("/v1/domains/{d}/workstation-certificates?limit=20"),
            ],
        ),
        (
            "rotations",
            vec![
                "/console/rotations".into(),
                "/v1/rotations/upcoming?within_days=30&limit=100".into(),
                "/v1/rotations/recent?limit=50".into(),
            ],
        ),
        (
            "audit",
            vec![
                "/console/audit".into(),
                "/healthz".into(),
                "/v1/log/sth?format=json".into(),
            ],
        ),
        (
            "apps",
            vec![
                "/console/apps".into(),
                "/v1/domains?limit=1000&removed=false".into(),
                "/v1/apps?limit=100&removed=false".into(),
                "/v1/provider/signing-keys?limit=20".into(),
            ],
        ),
        // An auditor paging through a past state: the same point, page after page.
        (
            "users as of a past position",
            vec![format!("/v1/users?limit=50&at_position={half}")],
        ),
        // An auditor stepping through history on a user's page: a new point each load,
        // one event later than the last (`{step}` is `half` plus the round).
        (
            "user as of, one event later each load",
            vec![format!("/v1/users/{u}?at_position={{step}}")],
        ),
        // An auditor going back on a user's page ("as of"): a new point each load, one
        // event earlier than the last (`{back}` is `half` less the round), so before every
        // past state kept. The user's stream alone is folded.
        (
            "user page as of, one event earlier each load",
            vec![
                format!("/v1/users/{u}?at_position={{back}}"),
                format!(
                    "/v1/users/{u}/password-history?order=newest&limit=20&at_position={{back}}"
                ),
                format!("/v1/users/{u}/timeline?order=newest&limit=50&at_position={{back}}"),
            ],
        ),
        // The baseline, in the same run: the same points folded from the log's start, as
        // the user's page did before it folded the user's stream alone.
        (
            "users as of, one event earlier each load (before: the log's prefix folded)",
            vec!["/v1/users?limit=1&at_position={back}".into()],
        ),
        (
            "user",
            vec![
                format!("/console/users/{u}"),
                format!("/v1/users/{u}"),
                format!("/v1/users/{u}/password-history?order=newest&limit=20"),
                format!("/v1/users/{u}/timeline?order=newest&limit=50"),
            ],
        ),
    ];
    let mut report = serde_json::Map::new();
    let mut worst_request_p99 = 0.0f64;
    for (page, paths) in &pages {
        let mut per_page = Vec::with_capacity(args.rounds);
        let mut per_path: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for round in 0..args.rounds {
            let mut total = 0.0;
            for (i, path) in paths.iter().enumerate() {
                let step = (half + round as u64).min(head);
                let back = half.saturating_sub(round as u64).max(1);
                let path = path
                    .replace("{step}", &step.to_string())
                    .replace("{back}", &back.to_string());
                let started = Instant::now();
                let r = http
                    .get(format!("{url}{path}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .map_err(|e| Error::Other(e.to_string()))?;
                let status = r.status();
                r.bytes().await.map_err(|e| Error::Other(e.to_string()))?;
                if !status.is_success() {
                    return Err(Error::Other(format!("{path}: {status}")));
                }
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                per_path[i].push(ms);
                total += ms;
            }
            per_page.push(total);
        }
        per_page.sort_by(|a, b| a.total_cmp(b));
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let requests: serde_json::Map<String, serde_json::Value> = paths
            .iter()
            .zip(per_path.iter_mut())
            .map(|(p, v)| {
                v.sort_by(|a, b| a.total_cmp(b));
                let p99 = percentile(v, 0.99);
                // A baseline is what the console no longer does.
                if !page.contains("(before") {
                    worst_request_p99 = worst_request_p99.max(p99);
                }
                (
                    p.clone(),
                    serde_json::json!({"p50_ms": r3(percentile(v, 0.5)), "p99_ms": r3(p99)}),
                )
            })
            .collect();
        report.insert(
            (*page).to_owned(),
            serde_json::json!({
                "page_p50_ms": r3(percentile(&per_page, 0.5)),
                "page_p99_ms": r3(percentile(&per_page, 0.99)),
                "requests": requests,
            }),
        );
    }
    outln!(
        "{}",
        serde_json::json!({
            "bench": "console",
            "users": args.users,
            "candidates": args.users,
            "rounds": args.rounds,
            "worst_request_p99_ms": (worst_request_p99 * 1000.0).round() / 1000.0,
            "pages": report,
        })
    )?;
    Ok(ExitCode::SUCCESS)
}
