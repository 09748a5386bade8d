//! The `graphsim` binary: serves a tenant file as Microsoft Graph would.

use clap::Parser;
use graphsim::{load_tenant, SimConfig};
use std::path::PathBuf;
use std::time::Duration;

/// A Microsoft Graph v1.0 and identity platform simulator.
#[derive(Parser, Debug)]
#[command(name = "graphsim", version, about)]
struct Args {
    /// The tenant file (see fixtures/README.md).
    #[arg(long)]
    tenant: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Add this many generated users: all in the sync group, every tenth in the rotation group.
    #[arg(long, default_value_t = 0)]
    generate_users: usize,
    /// Default page size of collections and delta rounds.
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// Lifetime of delta tokens, in seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    delta_token_ttl: u64,
    /// Name of the sync group that generated users join.
    #[arg(long, default_value = "Hideez Users Sync")]
    sync_group: String,
    /// Name of the rotation group that every tenth generated user joins.
    #[arg(long, default_value = "Hideez Key Auto Password Change")]
    rotation_group: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    let mut dir = match load_tenant(&args.tenant) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    dir.generate_users(args.generate_users, &args.sync_group, &args.rotation_group);
    let config = SimConfig {
        page_size: args.page_size.clamp(1, 999),
        delta_token_ttl: Duration::from_secs(args.delta_token_ttl),
        ..SimConfig::default()
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(2);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let users = dir.users.len();
    eprintln!(
        "graphsim: tenant {} with {users} users on http://{addr}",
        dir.tenant_id
    );
    let sim = graphsim::state::Sim::new(dir, config);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match graphsim::serve(listener, sim, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
