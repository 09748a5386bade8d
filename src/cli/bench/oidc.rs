//! `idledger bench oidc`: the OpenID Connect provider on a `serve` process. N users with a
//! passkey each (as `bench signin` makes them) sign in once per client; an app is
//! registered through the API (which also makes the provider's first signing key). Then C
//! clients run the code flow over and over — `/authorize` with the session, and the
//! measured part, the code exchange at `/token` (client authentication, PKCE, the rules,
//! `AppTokensIssued` appended durably, ID and access tokens signed ES256). Then each client
//! takes one refresh token per user and refreshes it in a chain (the family decided on the
//! user's stream, the next token's hash appended durably, tokens signed). Last, the
//! discovery document and the JWKS at full speed, against `/healthz` in the same run.

use super::api::{free_port, percentile, quiet_serve, wait_ready, Killed};
use super::signin::{fill, sign_in, signin_page, Holder};
use crate::error::Error;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use clap::Args;
use ring::rand::SystemRandom;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `idledger bench oidc`.
#[derive(Args, Debug)]
pub struct OidcArgs {
    /// A new data directory: the bench fills it.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Users, each signed in once; each client cycles through its share (so each user's
    /// stream grows by exchanges / users events, as days of real use would).
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Code exchanges in all.
    #[arg(long, default_value_t = 10_000)]
    pub exchanges: u32,
    /// Refresh-token grants in all.
    #[arg(long, default_value_t = 10_000)]
    pub refreshes: u32,
    /// Clients at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Seconds of discovery, JWKS and /healthz each.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

const REDIRECT: &str = "http://localhost:9/cb";

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

/// A session cookie for `holder`, signed in with its passkey as the sign-in page does.
async fn session(
    http: &reqwest::Client,
    url: &str,
    origin: &str,
    holder: &mut Holder,
) -> Result<String, Error> {
    let (flow, csrf) = signin_page(http, url).await?;
    sign_in(
        http,
        url,
        origin,
        (&flow, &csrf),
        holder,
        &SystemRandom::new(),
    )
    .await
}

/// A code from `/authorize` with the session `cookie`, and its PKCE verifier.
async fn authorize(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    client_id: &str,
    scope: &str,
) -> Result<(String, String), Error> {
    let verifier = crate::http::new_token_text();
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    let r = http
        .get(format!(
            "{url}/authorize?client_id={client_id}&redirect_uri={}&response_type=code&scope={}&state=s&nonce=n&code_challenge={challenge}&code_challenge_method=S256",
            urlencoding::encode(REDIRECT),
            urlencoding::encode(scope),
        ))
        .header("cookie", cookie)
        .send()
        .await
        .map_err(other)?;
    let location = r
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let code = location
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("code="))
        .ok_or_else(|| other(format!("authorize answered {}: {location}", r.status())))?
        .to_owned();
    Ok((code, verifier))
}

/// A `POST /token` with Basic client authentication; answers the token response.
async fn token(
    http: &reqwest::Client,
    url: &str,
    (client_id, secret): (&str, &str),
    form: &[(&str, &str)],
) -> Result<serde_json::Value, Error> {
    let r = http
        .post(format!("{url}/token"))
        .basic_auth(client_id, Some(secret))
        .form(form)
        .send()
        .await
        .map_err(other)?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.map_err(other)?;
    if !status.is_success() || body["id_token"].as_str().is_none() {
        return Err(other(format!("token answered {status}: {body}")));
    }
    Ok(body)
}

/// The code exchange of `authorize`'s code and verifier at `/token`.
async fn exchange(
    http: &reqwest::Client,
    url: &str,
    app: &(String, String),
    (code, verifier): (String, String),
) -> Result<serde_json::Value, Error> {
    token(
        http,
        url,
        (&app.0, &app.1),
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ],
    )
    .await
}

/// One client: codes from `/authorize`, each exchanged at `/token`; answers the exchanges'
/// milliseconds.
async fn client(
    http: reqwest::Client,
    url: String,
    cookies: Vec<String>,
    app: (String, String),
    count: u32,
) -> Result<Vec<f64>, Error> {
    let mut times = Vec::with_capacity(count as usize);
    for n in 0..count {
        let cookie = &cookies[n as usize % cookies.len()];
        let code = authorize(&http, &url, cookie, &app.0, "openid profile").await?;
        let started = Instant::now();
        exchange(&http, &url, &app, code).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(times)
}

/// A refresh family per session cookie, begun by a code exchange with `offline_access`;
/// answers each family's refresh token.
async fn begin_families(
    http: reqwest::Client,
    url: String,
    cookies: Vec<String>,
    app: (String, String),
) -> Result<Vec<String>, Error> {
    let mut held = Vec::with_capacity(cookies.len());
    for cookie in &cookies {
        let code = authorize(&http, &url, cookie, &app.0, "openid profile offline_access").await?;
        let body = exchange(&http, &url, &app, code).await?;
        let first = body["refresh_token"]
            .as_str()
            .ok_or_else(|| other(format!("no refresh token in {body}")))?;
        held.push(first.to_owned());
    }
    Ok(held)
}

/// One client of refresh tokens: `count` refreshes of its families in turn, each presenting
/// the family's newest token; answers the refreshes' milliseconds.
async fn refresher(
    http: reqwest::Client,
    url: String,
    mut held: Vec<String>,
    app: (String, String),
    count: u32,
) -> Result<Vec<f64>, Error> {
    let mut times = Vec::with_capacity(count as usize);
    for n in 0..count as usize {
        let families = held.len();
        let current = &mut held[n % families];
        let started = Instant::now();
        let body = token(
            &http,
            &url,
            (&app.0, &app.1),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", current.as_str()),
            ],
        )
        .await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        *current = body["refresh_token"]
            .as_str()
            .ok_or_else(|| other(format!("no refresh token in {body}")))?
            .to_owned();
    }
    Ok(times)
}

/// GETs of `path` by `c` clients for `seconds`; answers requests per second.
async fn rate(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    c: u32,
    seconds: u64,
) -> Result<f64, Error> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let (http, target) = (http.clone(), format!("{url}{path}"));
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let r = http.get(&target).send().await.map_err(other)?;
                    if !r.status().is_success() {
                        return Err(other(format!("{target}: {}", r.status())));
                    }
                    r.bytes().await.map_err(other)?;
                    n += 1;
                }
                Ok::<u64, Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(other)??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Runs `bench oidc`.
pub async fn oidc(args: OidcArgs) -> Result<ExitCode, Error> {
    if args.users < args.concurrency || args.concurrency == 0 {
        return Err(other("--users must be at least --concurrency"));
    }
    let mut holders = fill(&args.data_dir, args.users).await?;
    let port = free_port()?;
    let serve = Killed(quiet_serve(&args.data_dir, port)?.spawn()?);
    let url = format!("http://127.0.0.1:{port}");
    let origin = format!("http://localhost:{port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(args.concurrency as usize * 2)
        .build()
        .map_err(other)?;
    wait_ready(&http, &url, Duration::from_secs(600)).await?;
    let token = std::fs::read_to_string(args.data_dir.join("admin.token"))?
        .trim()
        .to_owned();
    let domains: serde_json::Value = http
        .get(format!("{url}/v1/domains"))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(other)?
        .json()
        .await
        .map_err(other)?;
    let domain = domains["items"][0]["id"].clone();
    let app: serde_json::Value = http
        .post(format!("{url}/v1/apps"))
        .bearer_auth(&token)
        .json(
            &serde_json::json!({"name": "bench", "redirect_uris": [REDIRECT],
            "type": "confidential", "domain_ids": [domain]}),
        )
        .send()
        .await
        .map_err(other)?
        .json()
        .await
        .map_err(other)?;
    let client_id = app["client_id"].as_str().unwrap_or_default().to_owned();
    let secret = app["client_secret"].as_str().unwrap_or_default().to_owned();
    let c = args.concurrency as usize;
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); c];
    for (i, h) in holders.iter_mut().enumerate() {
        shares[i % c].push(session(&http, &url, &origin, h).await?);
    }
    let per_client = args.exchanges / args.concurrency;
    let started = Instant::now();
    let runs: Vec<_> = shares
        .iter()
        .map(|cookies| {
            tokio::spawn(client(
                http.clone(),
                url.clone(),
                cookies.clone(),
                (client_id.clone(), secret.clone()),
                per_client,
            ))
        })
        .collect();
    let mut times = Vec::new();
    for r in runs {
        times.extend(r.await.map_err(other)??);
    }
    let flows_per_sec = times.len() as f64 / started.elapsed().as_secs_f64();
    let begun: Vec<_> = shares
        .into_iter()
        .map(|cookies| {
            tokio::spawn(begin_families(
                http.clone(),
                url.clone(),
                cookies,
                (client_id.clone(), secret.clone()),
            ))
        })
        .collect();
    let mut families = Vec::new();
    for b in begun {
        families.push(b.await.map_err(other)??);
    }
    let per_client = args.refreshes / args.concurrency;
    let started = Instant::now();
    let runs: Vec<_> = families
        .into_iter()
        .map(|held| {
            tokio::spawn(refresher(
                http.clone(),
                url.clone(),
                held,
                (client_id.clone(), secret.clone()),
                per_client,
            ))
        })
        .collect();
    let mut refresh_times = Vec::new();
    for r in runs {
        refresh_times.extend(r.await.map_err(other)??);
    }
    let refreshes_per_sec = refresh_times.len() as f64 / started.elapsed().as_secs_f64();
    let c = args.concurrency;
    let discovery = rate(
        &http,
        &url,
        "/.well-known/openid-configuration",
        c,
        args.seconds,
    )
    .await?;
    let jwks = rate(&http, &url, "/jwks.json", c, args.seconds).await?;
    let healthz = rate(&http, &url, "/healthz", c, args.seconds).await?;
    drop(serve);
    times.sort_by(|a, b| a.total_cmp(b));
    refresh_times.sort_by(|a, b| a.total_cmp(b));
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    outln!(
        "{}",
        serde_json::json!({
            "bench": "oidc",
            "exchanges": times.len(),
            "concurrency": c,
            "flows_per_sec": flows_per_sec.round(),
            "exchange_p50_ms": r3(percentile(&times, 0.5)),
            "exchange_p99_ms": r3(percentile(&times, 0.99)),
            "exchange_max_ms": r3(times.last().copied().unwrap_or_default()),
            "refreshes": refresh_times.len(),
            "refreshes_per_sec": refreshes_per_sec.round(),
            "refresh_p50_ms": r3(percentile(&refresh_times, 0.5)),
            "refresh_p99_ms": r3(percentile(&refresh_times, 0.99)),
            "refresh_max_ms": r3(refresh_times.last().copied().unwrap_or_default()),
            "discovery_per_sec": discovery.round(),
            "jwks_per_sec": jwks.round(),
            "baseline_healthz_per_sec": healthz.round(),
        })
    )?;
    Ok(ExitCode::SUCCESS)
}
