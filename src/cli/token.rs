//! `idledger token create`: a token issued while the server is stopped, printed once.

use crate::error::Error;
use crate::store::SledEventLog;
use clap::Args;
use idledger_domain::{Actor, KeyId, Role};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `idledger token create`.
#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// Data directory (the server must be stopped).
    #[arg(long, env = "IDLEDGER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// `admin`, `auditor` or `agent`.
    #[arg(long)]
    pub role: Role,
    /// For agents: a key it serves (repeat for several).
    #[arg(long = "key-id")]
    pub key_ids: Vec<String>,
    /// A label.
    #[arg(long, default_value = "")]
    pub name: String,
}

/// Prints the new token once: `{"id","token","position"}`.
pub async fn create(args: TokenCreateArgs) -> Result<ExitCode, Error> {
    let log = SledEventLog::open(&args.data_dir).map_err(|e| {
        Error::Other(format!(
            "{e} (is the server running? stop it first, or use POST /v1/tokens)"
        ))
    })?;
    let keys = args.key_ids.into_iter().map(KeyId).collect();
    let (id, text, position) =
        crate::server::issue_token(&*log, Actor::Operator, args.role, args.name, keys).await?;
    outln!(
        "{}",
        serde_json::json!({"id": id, "token": text, "position": position})
    )?;
    Ok(ExitCode::SUCCESS)
}
