//! `idledger graph check`: the arguments and the printing of [`crate::graph::check`].

use crate::error::Error;
use crate::graph::{GraphSettings, GraphTrust, Secret};
use clap::Args;
use idledger_domain::{
    DEFAULT_AUTHORITY_URL, DEFAULT_GRAPH_URL, DEFAULT_ROTATION_GROUP, DEFAULT_SYNC_GROUP,
};
use std::process::ExitCode;

/// Options of `idledger graph check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Entra tenant id (or verified domain name).
    #[arg(long)]
    pub tenant_id: String,
    /// App registration's client id.
    #[arg(long)]
    pub client_id: String,
    /// Environment variable holding the client secret (never a command-line argument).
    #[arg(long, default_value = "IDLEDGER_CLIENT_SECRET")]
    pub client_secret_env: String,
    /// Identity platform authority.
    #[arg(long, default_value = DEFAULT_AUTHORITY_URL)]
    pub authority_url: String,
    /// Graph service root.
    #[arg(long, default_value = DEFAULT_GRAPH_URL)]
    pub graph_url: String,
    /// Display name of the sync group.
    #[arg(long, default_value = DEFAULT_SYNC_GROUP)]
    pub sync_group: String,
    /// Display name of the rotation group.
    #[arg(long, default_value = DEFAULT_ROTATION_GROUP)]
    pub rotation_group: String,
    /// CA certificates (PEM) trusted beside the built-in roots, for a TLS-inspecting proxy
    /// (the same file as serve's `graph_ca_bundle`).
    #[arg(long, env = "IDLEDGER_GRAPH_CA_BUNDLE")]
    pub graph_ca_bundle: Option<std::path::PathBuf>,
}

/// Prints the report; exits 1 when anything is missing.
pub async fn check(args: CheckArgs) -> Result<ExitCode, Error> {
    // Unset, it is no secret Entra ID refused: nothing could be checked (exit 2).
    let secret = std::env::var(&args.client_secret_env).map_err(|_| {
        Error::Other(format!(
            "the client secret's variable {} is not set",
            args.client_secret_env
        ))
    })?;
    let settings = GraphSettings {
        authority_url: args.authority_url,
        graph_url: args.graph_url,
        tenant_id: args.tenant_id,
        client_id: args.client_id,
        client_secret: Secret::new(secret),
    };
    let trust = match &args.graph_ca_bundle {
        None => GraphTrust::default(),
        Some(path) => match GraphTrust::with_pem_file(path) {
            Ok(t) => t,
            Err(e) => return Err(Error::Other(format!("graph_ca_bundle: {e}"))),
        },
    };
    let report =
        crate::graph::check::check(settings, &trust, &args.sync_group, &args.rotation_group).await;
    outln!(
        "{}",
        serde_json::to_string(&report).map_err(|e| Error::Other(e.to_string()))?
    )?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
