//! `idledger serve`: its flags, then [`crate::server::run`] until Ctrl-C or SIGTERM.

use crate::error::Error;
use crate::server::{Config, Flags, LogFormat};
use clap::Args;
use std::path::PathBuf;

/// Options of `idledger serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, env = "IDLEDGER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// A TOML configuration file (every setting of README's list).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// The master key's file, outside the data dir (created, 0600, when missing). Back it
    /// up apart from the data: without it no sealed secret can be read.
    #[arg(long, env = "IDLEDGER_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Keep the master key at `<data-dir>/master.key`, next to what it protects (demos
    /// and tests; not for production).
    #[arg(long, env = "IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR")]
    pub allow_master_key_in_data_dir: bool,
}

impl ServeArgs {
    /// The configuration these flags, the file and the environment make.
    pub fn config(&self) -> Result<Config, Error> {
        Config::load(
            self.config.as_deref(),
            Flags {
                listen: self.listen.clone(),
                log_format: self.log_format,
                master_key_file: self.master_key_file.clone(),
                allow_master_key_in_data_dir: self.allow_master_key_in_data_dir,
            },
        )
    }
}
