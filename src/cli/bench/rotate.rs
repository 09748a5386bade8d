//! `idledger bench rotate`: N due users rotated against an in-process graphsim by a real
//! `serve` process, with the domain's concurrency limit checked on graphsim's side.

use super::sync::tempfile_dir;
use crate::client::{contoso, ServeProcess};
use crate::error::Error;
use clap::Args;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `idledger bench rotate`.
#[derive(Args, Debug)]
pub struct RotateArgs {
    /// Generated users, all in the sync and rotation groups, each given a key.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// The domain's `max_concurrent_rotations`.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    /// Graph's latency per password PATCH, in milliseconds (graphsim waits this long).
    #[arg(long, default_value_t = 0)]
    pub graph_latency_ms: u64,
    /// Data directory (a fresh temporary one when omitted; it must be empty).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs the benchmark and prints one JSON line.
pub async fn rotate(args: RotateArgs) -> Result<ExitCode, Error> {
    let dir = tempfile_dir(&args.data_dir)?;
    std::fs::create_dir_all(&dir)?;
    let mut tenant = contoso::directory()?;
    tenant.generate_users(args.users, contoso::SYNC_GROUP, contoso::ROTATION_GROUP);
    let rotation = tenant
        .groups
        .values()
        .find(|g| g.display_name == contoso::ROTATION_GROUP)
        .map(|g| g.id.clone())
        .unwrap_or_default();
    let generated: Vec<String> = tenant
        .users
        .keys()
        .filter(|k| k.starts_with("6e"))
        .cloned()
        .collect();
    if let Some(g) = tenant.groups.get_mut(&rotation) {
        g.members.extend(generated.iter().cloned());
    }
    let config = graphsim::SimConfig {
        patch_latency: Duration::from_millis(args.graph_latency_ms),
        ..graphsim::SimConfig::default()
    };
    let (sim_url, _sim) = graphsim::spawn(tenant, config).await?;
    let serve = ServeProcess::start(
        &dir,
        &[
            ("IDLEDGER_ROTATION_CHECK_SECS", "1"),
            ("IDLEDGER_ROTATION_RETRY_SECS", "0.1"),
        ],
    )
    .await?;
    let result = drive(&args, &serve, &sim_url).await;
    drop(serve);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn drive(args: &RotateArgs, serve: &ServeProcess, sim_url: &str) -> Result<ExitCode, Error> {
    let api = &serve.api;
    let settings = json!({"auto_import": true, "max_concurrent_rotations": args.concurrency});
    let domain = api.add_contoso(sim_url, settings).await?;
    let id = domain["id"].as_str().unwrap_or_default().to_owned();
    let run = api.sync_and_wait(&id, Duration::from_secs(600)).await?;
    if run["status"] != "succeeded" {
        return Err(Error::Other(format!("the sync did not succeed: {run}")));
    }
    // Every generated user gets a key (contoso's own users stay out).
    let mut users = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/users?domain={id}&status=active&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = api.call(Method::GET, &path, None).await?;
        for u in page["items"].as_array().into_iter().flatten() {
            if u["user_principal_name"]
                .as_str()
                .is_some_and(|p| p.starts_with("gen"))
            {
                users.push(u["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let pb = crate::cli::progress::bar(Some(users.len() as u64), "keys");
    stream::iter(users.iter().enumerate())
        .map(|(i, u)| {
            let pb = &pb;
            async move {
                api.call(
                    Method::PUT,
                    &format!("/v1/users/{u}/key"),
                    Some(json!({"key_id": format!("BENCH-{i:06}")})),
                )
                .await?;
                pb.inc(1);
                Ok::<(), Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    pb.finish_and_clear();

    // Switching rotation on makes every one of them due at once.
    let t = Instant::now();
    api.call(
        Method::PATCH,
        &format!("/v1/domains/{id}"),
        Some(json!({"auto_password_change_days": 30})),
    )
    .await?;
    let pb = crate::cli::progress::bar(Some(users.len() as u64), "rotated");
    let (done, failed) = loop {
        let (done, failed) = rotated(api, &id).await?;
        pb.set_position(done as u64);
        if done + failed >= users.len() {
            break (done, failed);
        }
        if t.elapsed() > Duration::from_secs(1800) {
            return Err(Error::Other(format!(
                "only {done} of {} rotated",
                users.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let stats: Value = reqwest::get(format!("{sim_url}/_sim/stats"))
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .json()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    outln!(
        "{}",
        json!({
            "bench": "rotate",
            "users": users.len(),
            "rotated": done,
            "failed": failed,
            "seconds": seconds,
            "rotations_per_s": done as f64 / seconds,
            "max_concurrent_rotations": args.concurrency,
            "max_concurrent_patches_seen": stats["max_concurrent_patches"],
            "graph_password_changes": stats["password_changes"],
            "graph_latency_ms": args.graph_latency_ms,
        })
    )?;
    let held =
        stats["max_concurrent_patches"].as_u64().unwrap_or(u64::MAX) <= u64::from(args.concurrency);
    Ok(if held && failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How many of the domain's users have a rotation that succeeded, and how many whose last
/// rotation ended otherwise.
async fn rotated(api: &crate::client::ApiClient, domain: &str) -> Result<(usize, usize), Error> {
    let mut done = 0;
    let mut failed = 0;
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/users?domain={domain}&status=active&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = api.call(Method::GET, &path, None).await?;
        for u in page["items"].as_array().into_iter().flatten() {
            if !u["last_rotation_at"].is_null() {
                done += 1;
            } else if u["needs_attention"] == true {
                failed += 1;
            }
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return Ok((done, failed)),
        }
    }
}
