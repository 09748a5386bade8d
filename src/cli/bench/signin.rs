//! `idledger bench signin`: passwordless sign-ins on a `serve` process. N users hold a
//! passkey each (ES256, kept by a software authenticator in this process); C clients sign
//! in over and over with the requests the sign-in page's script makes — the options (a
//! fresh challenge), then the assertion — so each sign-in is verified, decided, durably
//! recorded (`SignInSucceeded`, fdatasync'd) and answered with a session. Latency is per
//! sign-in (both requests) from this process on loopback. The baseline, in the same run:
//! the assertion verification alone, in this process, on one core.

use super::api::{free_port, percentile, quiet_serve, wait_ready, Killed};
use crate::error::Error;
use crate::secrets::keystore::KeyFile;
use crate::secrets::{Keyring, MasterKey, Secret};
use crate::signin::webauthn;
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use clap::Args;
use futures_util::stream::{self, StreamExt};
use idledger_domain::events::{DomainRegistered, PasskeyRegistered, UserDiscovered, UserImported};
use idledger_domain::*;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Options of `idledger bench signin`.
#[derive(Args, Debug)]
pub struct SigninArgs {
    /// A new data directory: the bench fills it.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Users, each with one passkey.
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Sign-ins in all.
    #[arg(long, default_value_t = 20_000)]
    pub sign_ins: u32,
    /// Clients signing in at once (each with its own users, so counters stay in order).
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
}

/// A user's passkey as its authenticator holds it.
pub(super) struct Holder {
    user: UserId,
    credential: Vec<u8>,
    key: EcdsaKeyPair,
    counter: u32,
}

/// The COSE_Key (RFC 9053) of a P-256 public key in uncompressed form.
fn cose_key(public: &[u8]) -> Result<Vec<u8>, Error> {
    use ciborium::value::{Integer, Value};
    let (x, y) = (public.get(1..33), public.get(33..65));
    let (Some(x), Some(y)) = (x, y) else {
        return Err(Error::Other("not an uncompressed P-256 point".into()));
    };
    let int = |n: i64| Value::Integer(Integer::from(n));
    let map = Value::Map(vec![
        (int(1), int(2)),
        (int(3), int(-7)),
        (int(-1), int(1)),
        (int(-2), Value::Bytes(x.to_vec())),
        (int(-3), Value::Bytes(y.to_vec())),
    ]);
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).map_err(|e| Error::Other(e.to_string()))?;
    Ok(out)
}

/// `n` users with SSO on (passwordless), each with a passkey sealed as the server seals
/// them; answers their authenticators.
pub(super) async fn fill(data_dir: &std::path::Path, n: u32) -> Result<Vec<Holder>, Error> {
    let log = SledEventLog::open(data_dir)?;
    if log.head().position > 0 {
        return Err(Error::Other(format!(
            "{}: not a new data dir (bench signin fills its own)",
            data_dir.display()
        )));
    }
    let secrets = |e: crate::secrets::SecretsError| Error::Other(e.to_string());
    let (master, _) = MasterKey::load(data_dir, None, true).map_err(secrets)?;
    let keyring = Arc::new(
        Keyring::open(master, Arc::new(KeyFile::open(data_dir).map_err(secrets)?))
            .map_err(secrets)?,
    );
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
    let rng = SystemRandom::new();
    let bar = super::progress::bar(Some(u64::from(n)), "users");
    let made: Vec<Result<Holder, Error>> = stream::iter(0..n)
        .map(|i| {
            let (log, keyring, rng, bar) = (log.clone(), keyring.clone(), rng.clone(), bar.clone());
            async move {
                let other = |e: ring::error::Unspecified| Error::Other(e.to_string());
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .map_err(other)?;
                let key =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                        .map_err(|e| Error::Other(e.to_string()))?;
                let user = UserId(Uuid::now_v7());
                let stream = StreamId::user(user);
                let credential = Uuid::new_v4().as_bytes().to_vec();
                let sealed = keyring
                    .seal(
                        &stream,
                        &Secret::new(B64.encode(cose_key(key.public_key().as_ref())?)),
                    )
                    .map_err(|e| Error::Other(e.to_string()))?;
                log.append(AppendRequest::new(
                    stream,
                    ExpectedVersion::NoStream,
                    vec![
                        d(UserDiscovered {
                            user_id: user,
                            domain_id: domain,
                            external_id: Uuid::new_v4().to_string(),
                            attributes: UserAttributes {
                                user_principal_name: format!("user{i}@bench.onmicrosoft.com"),
                                display_name: format!("Bench User {i}"),
                                account_enabled: true,
                                ..UserAttributes::default()
                            },
                        }
                        .into()),
                        d(UserImported {
                            sso: SsoSettings {
                                enabled: true,
                                method: SsoMethod::Passwordless,
                            },
                        }
                        .into()),
                        d(PasskeyRegistered {
                            credential_id: B64.encode(&credential),
                            name: "Bench key".into(),
                            sealed_public_key: sealed,
                            algorithm: webauthn::COSE_ALG_ES256,
                            attachment: Some(Attachment::CrossPlatform),
                            sign_count: 0,
                        }
                        .into()),
                    ],
                ))
                .await?;
                bar.inc(1);
                Ok(Holder {
                    user,
                    credential,
                    key,
                    counter: 0,
                })
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    bar.finish_and_clear();
    log.flush().await?;
    made.into_iter().collect()
}

/// The assertion an authenticator makes for `challenge` (base64url) at `origin`.
pub(super) fn assert(
    h: &mut Holder,
    challenge: &str,
    origin: &str,
    rp_id: &str,
    rng: &SystemRandom,
) -> Result<serde_json::Value, Error> {
    h.counter += 1;
    let client_data = serde_json::json!({
        "type": "webauthn.get", "challenge": challenge, "origin": origin, "crossOrigin": false,
    })
    .to_string();
    let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
    auth_data.push(0x05); // user present, user verified
    auth_data.extend_from_slice(&h.counter.to_be_bytes());
    let signed = [&auth_data[..], &Sha256::digest(client_data.as_bytes())[..]].concat();
    let signature = h
        .key
        .sign(rng, &signed)
        .map_err(|e| Error::Other(e.to_string()))?;
    let id = B64.encode(&h.credential);
    Ok(serde_json::json!({"credential": {
        "id": id, "rawId": id, "type": "public-key", "authenticatorAttachment": "cross-platform",
        "response": {
            "clientDataJSON": B64.encode(client_data),
            "authenticatorData": B64.encode(&auth_data),
            "signature": B64.encode(signature.as_ref()),
            "userHandle": B64.encode(h.user.0.as_bytes()),
        },
    }}))
}

/// The cookie a response sets under `name`, as `name=value`.
pub(super) fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The sign-in page as a browser loads it: its flow cookie and CSRF token.
pub(super) async fn signin_page(
    http: &reqwest::Client,
    url: &str,
) -> Result<(String, String), Error> {
    let other = |e: reqwest::Error| Error::Other(e.to_string());
    let page = http
        .get(format!("{url}/signin"))
        .send()
        .await
        .map_err(other)?;
    let flow = set_cookie(&page, "idl_flow")
        .ok_or_else(|| Error::Other("the sign-in page set no flow cookie".into()))?;
    let html = page.text().await.map_err(other)?;
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_owned();
    Ok((flow, csrf))
}

/// One passwordless sign-in of `holder` in the browser of `flow` (cookie, CSRF token), as
/// the sign-in page's script makes it: the options, then the assertion. Answers the
/// session cookie.
pub(super) async fn sign_in(
    http: &reqwest::Client,
    url: &str,
    origin: &str,
    (flow, csrf): (&str, &str),
    holder: &mut Holder,
    rng: &SystemRandom,
) -> Result<String, Error> {
    let other = |e: reqwest::Error| Error::Other(e.to_string());
    let options: serde_json::Value = http
        .post(format!("{url}/signin/passkey/options"))
        .header("cookie", flow)
        .header("x-csrf-token", csrf)
        .json(&serde_json::json!({}))
        .send()
        .await
        .map_err(other)?
        .json()
        .await
        .map_err(other)?;
    let challenge = options["challenge"].as_str().unwrap_or_default();
    let rp_id = options["rpId"].as_str().unwrap_or_default().to_owned();
    let body = assert(holder, challenge, origin, &rp_id, rng)?;
    let r = http
        .post(format!("{url}/signin/passkey"))
        .header("cookie", flow)
        .header("x-csrf-token", csrf)
        .json(&body)
        .send()
        .await
        .map_err(other)?;
    let status = r.status();
    let session = set_cookie(&r, "idl_user");
    let text = r.text().await.map_err(other)?;
    match session {
        Some(cookie) if status.is_success() => Ok(cookie),
        _ => Err(Error::Other(format!("a sign-in answered {status}: {text}"))),
    }
}

/// One client: a flow from the sign-in page, then sign-ins of its users in turn; answers
/// each sign-in's milliseconds.
async fn client(
    http: reqwest::Client,
    url: String,
    origin: String,
    mut holders: Vec<Holder>,
    count: u32,
) -> Result<Vec<f64>, Error> {
    let (flow, csrf) = signin_page(&http, &url).await?;
    let rng = SystemRandom::new();
    let mut times = Vec::with_capacity(count as usize);
    for n in 0..count {
        let i = n as usize % holders.len();
        let started = Instant::now();
        sign_in(&http, &url, &origin, (&flow, &csrf), &mut holders[i], &rng).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(times)
}

/// Assertion verifications per second on one core, in this process: the baseline.
pub(super) fn verify_only(rounds: u32) -> Result<f64, Error> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|e| Error::Other(e.to_string()))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| Error::Other(e.to_string()))?;
    let public = cose_key(key.public_key().as_ref())?;
    let mut h = Holder {
        user: UserId(Uuid::now_v7()),
        credential: vec![7; 16],
        key,
        counter: 0,
    };
    let rp = webauthn::RelyingParty {
        id: "localhost".into(),
        origin: "http://localhost:1".into(),
        name: "bench".into(),
    };
    let mut prepared = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let challenge = webauthn::new_challenge();
        let body = assert(&mut h, &B64.encode(challenge), &rp.origin, &rp.id, &rng)?;
        let response: webauthn::AssertionResponse =
            serde_json::from_value(body["credential"].clone())
                .map_err(|e| Error::Other(e.to_string()))?;
        prepared.push((challenge, response));
    }
    let started = Instant::now();
    for (n, (challenge, response)) in prepared.iter().enumerate() {
        webauthn::verify_assertion(&rp, challenge, &h.credential, &public, n as u32, response)
            .map_err(|e| Error::Other(e.to_string()))?;
    }
    Ok(f64::from(rounds) / started.elapsed().as_secs_f64())
}

/// Runs `bench signin`.
pub async fn signin(args: SigninArgs) -> Result<ExitCode, Error> {
    if args.users == 0 || args.concurrency == 0 || args.users < args.concurrency {
        return Err(Error::Other(
            "--users must be at least --concurrency (each client has its own users)".into(),
        ));
    }
    let holders = fill(&args.data_dir, args.users).await?;
    let baseline = tokio::task::spawn_blocking(|| verify_only(5_000))
        .await
        .map_err(|e| Error::Other(e.to_string()))??;
    let port = free_port()?;
    let serve = Killed(quiet_serve(&args.data_dir, port)?.spawn()?);
    let url = format!("http://127.0.0.1:{port}");
    let origin = format!("http://localhost:{port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    wait_ready(&http, &url, Duration::from_secs(600)).await?;
    // Each client takes every C-th user, so no two clients sign in one user at once.
    let c = args.concurrency as usize;
    let mut shares: Vec<Vec<Holder>> = (0..c).map(|_| Vec::new()).collect();
    for (i, h) in holders.into_iter().enumerate() {
        shares[i % c].push(h);
    }
    let per_client = args.sign_ins / args.concurrency;
    let started = Instant::now();
    let runs: Vec<_> = shares
        .into_iter()
        .map(|share| {
            tokio::spawn(client(
                http.clone(),
                url.clone(),
                origin.clone(),
                share,
                per_client,
            ))
        })
        .collect();
    let mut times = Vec::new();
    for r in runs {
        times.extend(r.await.map_err(|e| Error::Other(e.to_string()))??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(serve);
    // Every sign-in is in the log.
    let log = SledEventLog::open(&args.data_dir)?;
    let recorded = crate::store::envelopes(&*log, 1)
        .filter(|e| matches!(e, Ok(env) if env.event.kind() == "SignInSucceeded"))
        .count();
    times.sort_by(|a, b| a.total_cmp(b));
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    outln!(
        "{}",
        serde_json::json!({
            "bench": "signin",
            "users": args.users,
            "sign_ins": times.len(),
            "concurrency": args.concurrency,
            "sign_ins_per_sec": (times.len() as f64 / elapsed).round(),
            "p50_ms": r3(percentile(&times, 0.5)),
            "p99_ms": r3(percentile(&times, 0.99)),
            "max_ms": r3(times.last().copied().unwrap_or_default()),
            "recorded": recorded,
            "baseline_verify_only_per_sec_one_core": baseline.round(),
        })
    )?;
    Ok(ExitCode::SUCCESS)
}
