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
    /// Serve HTTPS with a certificate for localhost and 127.0.0.1 from a certificate
    /// authority made at start (clients trust it by its certificate, see --tls-ca-out).
    #[arg(long)]
    tls: bool,
    /// Where --tls writes the authority's certificate (PEM): hand it to idledger as
    /// `graph_ca_bundle`.
    #[arg(long, default_value = "graphsim-ca.pem", requires = "tls")]
    tls_ca_out: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Colour only for a person reading a terminal: piped logs stay plain text.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    let listener = match std::net::TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(2);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let users = dir.users.len();
    let tenant = dir.tenant_id.clone();
    let sim = graphsim::state::Sim::new(dir, config);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let served = if args.tls {
        let tls = match make_tls(&args.tls_ca_out) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        eprintln!(
            "graphsim: tenant {} with {users} users on https://localhost:{port} (CA certificate in {})",
            tenant,
            args.tls_ca_out.display()
        );
        graphsim::serve_tls(listener, sim, tls, shutdown).await
    } else {
        eprintln!(
            "graphsim: tenant {} with {users} users on http://127.0.0.1:{port}",
            tenant
        );
        match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => graphsim::serve(l, sim, shutdown).await,
            Err(e) => Err(e),
        }
    };
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A new authority, its certificate written to `ca_out`, and a server certificate it signed.
fn make_tls(ca_out: &std::path::Path) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    let ca = graphsim::tls::TestCa::new("graphsim test CA").map_err(|e| e.to_string())?;
    std::fs::write(ca_out, ca.cert_pem()).map_err(|e| format!("{}: {e}", ca_out.display()))?;
    ca.issue(&["localhost", "127.0.0.1", "::1"])
        .and_then(|leaf| leaf.server_config())
        .map_err(|e| e.to_string())
}
