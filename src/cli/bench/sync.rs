//! `idledger bench sync`: a first sync of a large generated group and an incremental run
//! carrying a known number of changes, against an in-process graphsim, through the API.

use crate::client::{contoso, ServeProcess};
use crate::error::Error;
use clap::Args;
use graphsim::tenant::UserEntry;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `idledger bench sync`.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Generated members of the sync group (besides contoso's own).
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Changes the incremental run carries (a mix of new members, leavers, attribute
    /// changes and disabled accounts).
    #[arg(long, default_value_t = 1_000)]
    pub changes: usize,
    /// Data directory (a fresh temporary one when omitted; it must be empty).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Resident and peak memory of a process, in MiB (Linux; zero elsewhere).
pub(crate) fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs the benchmark and prints one JSON line.
pub async fn sync(args: SyncArgs) -> Result<ExitCode, Error> {
    // The changes are made to generated members: there must be as many.
    if args.changes > args.users {
        return Err(Error::Other(format!(
            "--changes {} is more than --users {}",
            args.changes, args.users
        )));
    }
    let temp = tempfile_dir(&args.data_dir)?;
    let dir = temp.clone();
    std::fs::create_dir_all(&dir)?;
    let mut tenant = contoso::directory()?;
    tenant.generate_users(args.users, contoso::SYNC_GROUP, contoso::ROTATION_GROUP);
    let (sim_url, sim) = graphsim::spawn(tenant, graphsim::SimConfig::default()).await?;

    // The engine is a real `serve` process, so its memory is measured alone.
    let serve = ServeProcess::start(&dir, &[]).await?;
    let result = drive(&args, &serve, &sim_url, &sim).await;
    drop(serve);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Runs both syncs on `serve` and prints the figures.
async fn drive(
    args: &SyncArgs,
    serve: &ServeProcess,
    sim_url: &str,
    sim: &graphsim::state::Sim,
) -> Result<ExitCode, Error> {
    let api = &serve.api;
    let pid = serve.pid();
    let domain = api.add_contoso(sim_url, json!({})).await?;
    let id = domain["id"].as_str().unwrap_or_default().to_owned();
    let pb = crate::cli::progress::bar(None, "first sync");
    pb.enable_steady_tick(Duration::from_millis(200));
    let t = Instant::now();
    let first = api.sync_and_wait(&id, Duration::from_secs(600)).await?;
    let first_s = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    if first["status"] != "succeeded" {
        return Err(Error::Other(format!(
            "the first run did not succeed: {first}"
        )));
    }

    // The changes, made in the simulator's directory: a quarter each.
    {
        let mut inner = sim.lock();
        let sync_id = inner
            .dir
            .groups
            .values()
            .find(|g| g.display_name == contoso::SYNC_GROUP)
            .map(|g| g.id.clone())
            .unwrap_or_default();
        let members: Vec<String> = inner
            .dir
            .users
            .keys()
            .filter(|k| k.starts_with("6e"))
            .cloned()
            .collect();
        let quarter = args.changes / 4;
        for (i, m) in members.iter().take(args.changes - 3 * quarter).enumerate() {
            let mut u = inner.dir.users[m].clone();
            u.display_name = format!("Renamed {i}");
            inner.put_user(u);
        }
        let rest = &members[args.changes - 3 * quarter..];
        for m in rest.iter().take(quarter) {
            inner.set_member(&sync_id, m, false);
        }
        for m in rest.iter().skip(quarter).take(quarter) {
            let mut u = inner.dir.users[m].clone();
            u.account_enabled = false;
            inner.put_user(u);
        }
        for i in 0..quarter {
            let id = uuid::Uuid::new_v4().to_string();
            inner.put_user(UserEntry {
                id: id.clone(),
                user_principal_name: format!("new{i}@contoso.onmicrosoft.com"),
                display_name: format!("New Member {i}"),
                mail: None,
                given_name: None,
                surname: None,
                account_enabled: true,
                password: None,
                admin_roles: Vec::new(),
            });
            inner.set_member(&sync_id, &id, true);
        }
    }
    let t = Instant::now();
    let second = api.sync_and_wait(&id, Duration::from_secs(600)).await?;
    let incremental_s = t.elapsed().as_secs_f64();
    if second["status"] != "succeeded" {
        return Err(Error::Other(format!(
            "the incremental run did not succeed: {second}"
        )));
    }
    // An admin pages through every candidate, as the import page does.
    let t = Instant::now();
    let mut candidates = 0usize;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => format!("/v1/domains/{id}/candidates?limit=1000"),
            Some(a) => format!("/v1/domains/{id}/candidates?limit=1000&after={a}"),
        };
        let page = api.call(reqwest::Method::GET, &path, None).await?;
        candidates += page["items"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let paging_s = t.elapsed().as_secs_f64();
    let (rss, peak) = memory_mib(pid);
    outln!(
        "{}",
        json!({
            "candidates_paged": candidates,
            "candidates_paging_seconds": paging_s,
            "bench": "sync",
            "users": args.users,
            "first_sync_seconds": first_s,
            "first_counters": first["counters"],
            "changes": args.changes,
            "incremental_seconds": incremental_s,
            "incremental_counters": second["counters"],
            "serve_rss_mib": rss,
            "serve_peak_rss_mib": peak,
        })
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn tempfile_dir(given: &Option<PathBuf>) -> Result<PathBuf, Error> {
    let dir = match given {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "idledger-bench-sync-{}",
            uuid::Uuid::new_v4().simple()
        )),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        return Err(Error::Other(format!(
            "{} is not empty: bench sync needs a fresh data dir",
            dir.display()
        )));
    }
    Ok(dir)
}
