//! `idledger demo`: the engine end to end against the Graph simulator.
//!
//! It starts graphsim with the contoso tenant (built into the binary) on a free loopback
//! port, and the engine with its HTTP API on another; then, through the API as an admin
//! would: registers the domain with its credentials, runs a sync, imports the candidates,
//! and prints a summary. It then serves until Ctrl-C, or exits with `--once`.

use crate::client::{contoso, ApiClient};
use crate::error::Error;
use crate::rotation::RotationConfig;
use crate::server::{issue_token, start_with, Config};
use crate::sync::SyncConfig;
use clap::Args;
use idledger_domain::{Actor, Role};
use idledger_replay::Verifier;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `idledger demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Data directory to use (a fresh temporary one when omitted).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Exit after the summary instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Address of the engine's API, on loopback (default: a free port): the demo's users
    /// sign in at `localhost`, its passkeys' relying party.
    #[arg(long, default_value = "127.0.0.1:0", value_parser = loopback_address)]
    pub listen: String,
}

/// `--listen`: a loopback address (its enrolment and sign-in links name `localhost`).
fn loopback_address(text: &str) -> Result<String, String> {
    if let Some(port) = text.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|p| format!("127.0.0.1:{p}"))
            .map_err(|e| format!("localhost:PORT: {e}"));
    }
    match text.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Ok(text.to_owned()),
        Ok(_) => Err("the demo listens on loopback only (127.0.0.1:PORT or [::1]:PORT); `serve` takes any address with its public_url".into()),
        Err(e) => Err(format!("an address such as 127.0.0.1:8080: {e}")),
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<ExitCode, Error> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            std::env::temp_dir().join(format!("idledger-demo-{}", uuid::Uuid::new_v4().simple()))
        }
    };
    let tenant = contoso::directory()?;
    // graphsim speaks HTTPS with a certificate from a CA made now, and the engine trusts
    // that CA the way `graph_ca_bundle` makes it: the TLS path production takes.
    std::fs::create_dir_all(&dir)?;
    let ca =
        graphsim::tls::TestCa::new("idledger demo CA").map_err(|e| Error::Other(e.to_string()))?;
    let ca_file = dir.join("graphsim-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let leaf = ca
        .issue(&["localhost"])
        .and_then(|l| l.server_config())
        .map_err(|e| Error::Other(e.to_string()))?;
    let (sim_url, _sim) = graphsim::spawn_tls(tenant, graphsim::SimConfig::default(), leaf).await?;
    let sync = SyncConfig {
        trust: crate::graph::GraphTrust::with_pem_bundle(ca.cert_pem().as_bytes())
            .map_err(Error::Other)?,
        ..SyncConfig::default()
    };

    let config = Config {
        listen: args.listen.clone(),
        // A demo's data dir is throwaway: its master key may sit inside it.
        allow_master_key_in_data_dir: true,
        ..Config::default()
    };
    let (mut state, _) = start_with(&dir, &config, sync, RotationConfig::default()).await?;
    let start = state.engine.log.head().position;
    // The demo's own admin token: a reused data dir has no bootstrap token to read.
    let (token_id, token, position) = issue_token(
        &*state.engine.log,
        Actor::Operator,
        Role::Admin,
        "demo".into(),
        vec![],
    )
    .await?;
    state
        .engine
        .projector
        .wait_for(position, Duration::from_secs(10))
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| Error::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    // Users' browsers come to `localhost` (a passkey's relying party is a name).
    state.public_url = crate::http::PublicUrl::loopback_default(addr, false);
    let public = format!("http://localhost:{}", addr.port());
    let log = state.engine.log.clone();
    let projector = state.engine.projector.clone();
    // One click into the console: a one-time sign-in link for the demo's admin token.
    let console_link = format!("{url}/console/sign-in/{}", state.sessions.ticket(token_id));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::serve(
        listener,
        crate::console::app(state),
        config.limits(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let admin = ApiClient::new(url.clone(), token);

    let domain = register(&admin, &sim_url).await?;
    let id = domain["id"].as_str().unwrap_or_default().to_owned();
    let run = admin.sync_and_wait(&id, Duration::from_secs(120)).await?;
    let imported = admin
        .call(
            Method::POST,
            &format!("/v1/domains/{id}/import"),
            Some(json!({"all": true})),
        )
        .await?;
    let keys = rotate_and_deliver(&admin, &id, imported["position"].as_u64()).await?;
    let sim_http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())
                .map_err(|e| Error::Other(e.to_string()))?,
        )
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    let invites = invite_two(&admin, &sim_http, &sim_url, &public, &dir, &id).await?;
    projector
        .wait_for(log.head().position, Duration::from_secs(10))
        .await
        .map_err(|e| Error::Other(e.to_string()))?;

    let mut verifier = Verifier::new();
    log.records(1)(&mut |pos, bytes| {
        verifier.push(pos, bytes);
        std::ops::ControlFlow::Continue(())
    })?;
    let report = verifier.finish();
    let by_status = {
        let p = projector.read();
        let mut by_status = std::collections::BTreeMap::new();
        for u in p.users.of_domain(idledger_domain::DomainId(
            id.parse()
                .map_err(|_| Error::Other("bad domain id".into()))?,
        )) {
            *by_status.entry(u.status.as_str()).or_insert(0) += 1;
        }
        by_status
    };
    let ok = report.ok && run["status"] == "succeeded" && keys.confirmed == keys.succeeded;
    outln!("idledger demo")?;
    outln!("  data dir        {}", dir.display())?;
    outln!(
        "  graph (sim)     {sim_url} (HTTPS; its CA in {})",
        ca_file.display()
    )?;
    outln!("  domain          {} ({id})", contoso::DOMAIN)?;
    outln!(
        "  sync run        {} {} (added {}, changed {}, left {}, deleted {})",
        run["run_id"].as_str().unwrap_or_default(),
        run["status"].as_str().unwrap_or_default(),
        run["counters"]["added"],
        run["counters"]["changed"],
        run["counters"]["left"],
        run["counters"]["deleted"],
    )?;
    outln!("  imported        {}", imported["imported"])?;
    outln!("  keys assigned   {}", keys.assigned)?;
    outln!(
        "  rotations       {} succeeded, {} refused by Graph",
        keys.succeeded,
        keys.refused.len()
    )?;
    for (upn, code) in &keys.refused {
        outln!("    refused       {upn}: {code} (a Global Administrator: the app may not reset it; the old password stays)")?;
    }
    outln!(
        "  key writes      {} confirmed by the agent",
        keys.confirmed
    )?;
    for (status, n) in &by_status {
        outln!("  users {status:<11} {n}")?;
    }
    outln!("  events appended {}", log.head().position - start)?;
    outln!(
        "  chain head      {} @ {}",
        report.head_hash,
        report.head_position
    )?;
    outln!(
        "  verify          {}",
        if report.ok { "ok" } else { "FAILED" }
    )?;
    outln!()?;
    outln!("  console         {url}/  (one-time sign-in: {console_link})")?;
    outln!("  user sign-in    {public}/signin")?;
    for i in &invites {
        outln!("  enrol           {} ({}): {}", i.upn, i.method, i.link)?;
        if let Some(p) = &i.password {
            outln!("                  its Entra ID password in graphsim: {p}")?;
        }
    }
    outln!("  API             {url}")?;
    outln!("  admin token     {}", admin.token)?;
    outln!()?;
    outln!(
        "Try: curl -H 'Authorization: Bearer {}' {url}/v1/users?status=active",
        admin.token
    )?;
    outln!(
        "     IDLEDGER_TOKEN={} idledger verify --server {url}",
        admin.token
    )?;
    // The auditor's side of provable history: the checkpoint kept between visits.
    if let Ok(key) = crate::notary::key::public_key(&dir) {
        outln!(
            "     IDLEDGER_TOKEN={} idledger verify --server {url} --checkpoint auditor.checkpoint --public-key '{key}'",
            admin.token
        )?;
    }

    if !args.once {
        outln!()?;
        outln!("Serving until Ctrl-C.")?;
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(());
    let _ = server.await;
    log.flush().await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Registers the demo domain (or points an existing one at this run's simulator).
async fn register(admin: &ApiClient, sim_url: &str) -> Result<Value, Error> {
    let existing = admin.call(Method::GET, "/v1/domains", None).await?;
    let found = existing["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["domain"] == contoso::DOMAIN && d["removed"] == false)
        .cloned();
    let credentials = contoso::credentials();
    let Some(d) = found else {
        let d = admin
            .add_contoso(sim_url, json!({"auto_password_change_days": 30}))
            .await?;
        let id = d["id"].as_str().unwrap_or_default();
        admin
            .call(
                Method::PUT,
                &format!("/v1/domains/{id}/sso-defaults"),
                Some(json!({"enabled": true, "method": "passwordless"})),
            )
            .await?;
        return Ok(d);
    };
    let id = d["id"].as_str().unwrap_or_default();
    // Moving where the secret goes needs the secret itself in the same request.
    admin
        .call(
            Method::PATCH,
            &format!("/v1/domains/{id}"),
            Some(json!({
                "graph_url": sim_url,
                "authority_url": sim_url,
                "client_secret": credentials["client_secret"],
            })),
        )
        .await
}

/// What the rotation part of the demo did.
struct KeysReport {
    assigned: usize,
    succeeded: usize,
    refused: Vec<(String, String)>,
    confirmed: usize,
}

/// Gives every rotation-group member a key, rotates their passwords, and acknowledges
/// the key writes as the workstation agent would.
async fn rotate_and_deliver(
    admin: &ApiClient,
    domain: &str,
    imported_at: Option<u64>,
) -> Result<KeysReport, Error> {
    let after_import = imported_at.map_or(String::new(), |p| format!("&min_position={p}"));
    let users = admin
        .call(
            Method::GET,
            &format!("/v1/users?domain={domain}&status=active&limit=1000{after_import}"),
            None,
        )
        .await?;
    let members: Vec<(String, String)> = users["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["in_rotation_group"] == true)
        .map(|u| {
            (
                u["id"].as_str().unwrap_or_default().to_owned(),
                u["user_principal_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let mut keys = Vec::new();
    for (i, (id, _)) in members.iter().enumerate() {
        let key = format!("HZ-{:04}", i + 1);
        admin
            .call(
                Method::PUT,
                &format!("/v1/users/{id}/key"),
                Some(json!({"key_id": key})),
            )
            .await?;
        // A 409 means the scheduler got there first (the domain rotates every 30 days, and
        // a user with a new key is due): its rotation is as good as ours.
        if let Err(e) = admin
            .call(Method::POST, &format!("/v1/users/{id}/rotate"), None)
            .await
        {
            if !e.to_string().contains("409") {
                return Err(e);
            }
        }
        keys.push(key);
    }
    let mut report = KeysReport {
        assigned: members.len(),
        succeeded: 0,
        refused: Vec::new(),
        confirmed: 0,
    };
    for (id, upn) in &members {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let last = loop {
            let h = admin
                .call(
                    Method::GET,
                    &format!("/v1/users/{id}/password-history"),
                    None,
                )
                .await?;
            let last = h["items"].as_array().and_then(|v| v.last()).cloned();
            if let Some(r) = last.filter(|r| r["outcome"] != "pending") {
                break r;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Other(format!("the rotation of {upn} did not end")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if last["outcome"] == "succeeded" {
            report.succeeded += 1;
        } else {
            let code = last["graph_code"].as_str().unwrap_or("unknown").to_owned();
            report.refused.push((upn.clone(), code));
        }
    }
    let agent = admin
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "agent", "name": "demo workstation agent", "key_ids": keys})),
        )
        .await?;
    let agent = ApiClient::new(
        admin.url.clone(),
        agent["token"].as_str().unwrap_or_default().to_owned(),
    );
    let writes = agent
        .call(Method::GET, "/v1/agent/key-writes", None)
        .await?;
    for w in writes["items"].as_array().into_iter().flatten() {
        // A real agent writes `password` to the key `key_id` here.
        let id = w["id"].as_str().unwrap_or_default();
        agent
            .call(
                Method::POST,
                &format!("/v1/agent/key-writes/{id}/ack"),
                Some(json!({"result": "written", "detail": "demo"})),
            )
            .await?;
        report.confirmed += 1;
    }
    Ok(report)
}

/// An invited user of the demo.
struct Invited {
    upn: String,
    method: &'static str,
    link: String,
    password: Option<String>,
}

/// Invites two active users with keys to no rotation — one passwordless (the domain's
/// default), one with Entra ID credentials and a second factor — after telling graphsim's
/// app registration the sign-in callback; answers their enrolment links (from the outbox).
async fn invite_two(
    admin: &ApiClient,
    sim_http: &reqwest::Client,
    sim_url: &str,
    public: &str,
    dir: &std::path::Path,
    domain: &str,
) -> Result<Vec<Invited>, Error> {
    let other = |e: reqwest::Error| Error::Other(e.to_string());
    sim_http
        .patch(format!("{sim_url}/_sim/apps/{}", contoso::CLIENT_ID))
        .json(&json!({"redirectUris": [format!("{public}/signin/entra/callback")]}))
        .send()
        .await
        .map_err(other)?
        .error_for_status()
        .map_err(other)?;
    let users = admin
        .call(
            Method::GET,
            &format!("/v1/users?domain={domain}&status=active&limit=100"),
            None,
        )
        .await?;
    let picked: Vec<Value> = users["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["key_id"].is_null())
        .take(2)
        .cloned()
        .collect();
    let mut invited = Vec::new();
    for (n, u) in picked.iter().enumerate() {
        let id = u["id"].as_str().unwrap_or_default();
        let upn = u["user_principal_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let method = if n == 0 {
            "passwordless"
        } else {
            "password_and_second_factor"
        };
        admin
            .call(
                Method::PATCH,
                &format!("/v1/users/{id}"),
                Some(json!({"sso_override": {"enabled": true, "method": method}})),
            )
            .await?;
        admin
            .call(Method::POST, &format!("/v1/users/{id}/invite"), None)
            .await?;
        let password = if n == 0 {
            None
        } else {
            let external = u["external_id"].as_str().unwrap_or_default();
            let p: Value = sim_http
                .get(format!("{sim_url}/_sim/users/{external}/password"))
                .send()
                .await
                .map_err(other)?
                .json()
                .await
                .map_err(other)?;
            p["password"].as_str().map(str::to_owned)
        };
        invited.push(Invited {
            link: newest_link(&dir.join("outbox"), &upn).unwrap_or_default(),
            upn,
            method,
            password,
        });
    }
    Ok(invited)
}

/// The enrolment link in the newest invite to `upn` in the outbox.
fn newest_link(outbox: &std::path::Path, upn: &str) -> Option<String> {
    let tag = upn.replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '@',
        "_",
    );
    let mut files: Vec<_> = std::fs::read_dir(outbox)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(&tag))
        .collect();
    files.sort();
    let mail = std::fs::read_to_string(files.last()?).ok()?;
    mail.split_whitespace()
        .find(|w| w.contains("/enrol/"))
        .map(str::to_owned)
}
