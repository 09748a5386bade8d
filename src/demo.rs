//! `idledger demo`: the engine end to end against the Graph simulator.
//!
//! It starts graphsim with the contoso tenant (built into the binary) on a free loopback
//! port, and the engine with its HTTP API on another; then, through the API as an admin
//! would: registers the domain with its credentials, runs a sync, imports the candidates,
//! and prints a summary. It then serves until Ctrl-C, or exits with `--once`.

use crate::api_client::ApiClient;
use crate::cli::CliError;
use crate::rotation::RotationConfig;
use crate::server::{issue_token, start_with, Config};
use crate::store::EventLog;
use crate::sync::SyncConfig;
use clap::Args;
use idledger_domain::{Actor, Role};
use idledger_replay::Verifier;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The demo tenant, the same file as `fixtures/tenants/contoso.json`.
const CONTOSO: &str = include_str!("../fixtures/tenants/contoso.json");
const DOMAIN: &str = "contoso.onmicrosoft.com";
const TENANT: &str = "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b";
const CLIENT_ID: &str = "11111111-2222-4333-8444-555555555555";
const CLIENT_SECRET: &str = "contoso-demo-secret";

/// Options of `idledger demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Data directory to use (a fresh temporary one when omitted).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Exit after the summary instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Address of the engine's API (default: a free loopback port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<ExitCode, CliError> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            std::env::temp_dir().join(format!("idledger-demo-{}", uuid::Uuid::new_v4().simple()))
        }
    };
    let tenant = graphsim::parse_tenant(CONTOSO).map_err(CliError::Other)?;
    let (sim_url, _sim) = graphsim::spawn(tenant, graphsim::SimConfig::default()).await?;

    let config = Config {
        listen: args.listen.clone(),
        ..Config::default()
    };
    let (state, _) = start_with(
        &dir,
        &config,
        SyncConfig::default(),
        RotationConfig::default(),
    )
    .await?;
    let start = state.log.head().position;
    // The demo's own admin token: a reused data dir has no bootstrap token to read.
    let (_, token, position) = issue_token(
        &state.log,
        Actor::Operator,
        Role::Admin,
        "demo".into(),
        vec![],
    )
    .await?;
    state
        .projector
        .wait_for(position, Duration::from_secs(10))
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let url = format!("http://{}", listener.local_addr()?);
    let log = state.log.clone();
    let projector = state.projector.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::serve(listener, state, async {
        let _ = stopped.await;
    }));
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
    projector
        .wait_for(log.head().position, Duration::from_secs(10))
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;

    let mut verifier = Verifier::new();
    for r in log.raw_records(1) {
        let (pos, bytes) = r?;
        verifier.push(pos, &bytes);
    }
    let report = verifier.finish();
    let by_status = {
        let p = projector.read();
        let mut by_status = std::collections::BTreeMap::new();
        for u in p.users.of_domain(idledger_domain::DomainId(
            id.parse()
                .map_err(|_| CliError::Other("bad domain id".into()))?,
        )) {
            *by_status.entry(u.status.as_str()).or_insert(0) += 1;
        }
        by_status
    };
    let ok = report.ok && run["status"] == "succeeded";
    println!("idledger demo");
    println!("  data dir        {}", dir.display());
    println!("  graph (sim)     {sim_url}");
    println!("  domain          {DOMAIN} ({id})");
    println!(
        "  sync run        {} {} (added {}, changed {}, left {}, deleted {})",
        run["run_id"].as_str().unwrap_or_default(),
        run["status"].as_str().unwrap_or_default(),
        run["counters"]["added"],
        run["counters"]["changed"],
        run["counters"]["left"],
        run["counters"]["deleted"],
    );
    println!("  imported        {}", imported["imported"]);
    for (status, n) in &by_status {
        println!("  users {status:<11} {n}");
    }
    println!("  events appended {}", log.head().position - start);
    println!(
        "  chain head      {} @ {}",
        report.head_hash, report.head_position
    );
    println!(
        "  verify          {}",
        if report.ok { "ok" } else { "FAILED" }
    );
    println!();
    println!("  API             {url}");
    println!("  admin token     {}", admin.token);
    println!();
    println!(
        "Try: curl -H 'Authorization: Bearer {}' {url}/v1/users?status=active",
        admin.token
    );
    println!(
        "     IDLEDGER_TOKEN={} idledger verify --server {url}",
        admin.token
    );

    if !args.once {
        println!();
        println!("Serving until Ctrl-C.");
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
async fn register(admin: &ApiClient, sim_url: &str) -> Result<Value, CliError> {
    let existing = admin.call(Method::GET, "/v1/domains", None).await?;
    let found = existing["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["domain"] == DOMAIN && d["removed"] == false)
        .cloned();
    let credentials = json!({
        "tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
    });
    let Some(d) = found else {
        let mut body = json!({
            "domain": DOMAIN,
            "graph_url": sim_url,
            "authority_url": sim_url,
            "auto_password_change_days": 30,
        });
        for (k, v) in credentials.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let d = admin.call(Method::POST, "/v1/domains", Some(body)).await?;
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
    admin
        .call(
            Method::PATCH,
            &format!("/v1/domains/{id}"),
            Some(json!({"graph_url": sim_url, "authority_url": sim_url})),
        )
        .await?;
    admin
        .call(
            Method::PUT,
            &format!("/v1/domains/{id}/credentials"),
            Some(credentials),
        )
        .await
}
