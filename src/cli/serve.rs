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
    /// `--allow-master-key-in-data-dir=false` (or the environment's `false`) turns off
    /// what the file turned on.
    #[arg(
        long,
        env = "IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_master_key_in_data_dir: Option<bool>,
    /// The server certificate chain (PEM); with --tls-key, serve speaks HTTPS only
    /// (reloaded when the file changes or on SIGHUP). Either may come from the config
    /// file or the environment instead: both or neither is checked once they are merged.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Also listen here for plain HTTP that only redirects to HTTPS.
    #[arg(long)]
    pub redirect_listen: Option<String>,
    /// CA certificates (PEM) trusted for Graph beside the built-in roots (a TLS-inspecting
    /// proxy's).
    #[arg(long)]
    pub graph_ca_bundle: Option<PathBuf>,
    /// The origin users' browsers reach this server at, e.g. `https://idp.contoso.com`
    /// (invites link there; its host is the WebAuthn relying-party id). Default with a
    /// loopback `--listen`: `http://localhost:<port>`.
    #[arg(long)]
    pub public_url: Option<String>,
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
                tls_cert: self.tls_cert.clone(),
                tls_key: self.tls_key.clone(),
                redirect_listen: self.redirect_listen.clone(),
                graph_ca_bundle: self.graph_ca_bundle.clone(),
                public_url: self.public_url.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn the_master_key_flag_is_set_either_way_or_left_to_the_file() {
        let parse = |args: &[&str]| {
            let mut all = vec!["idledger", "--data-dir", "d"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .unwrap()
                .serve
                .allow_master_key_in_data_dir
        };
        let flag = "--allow-master-key-in-data-dir";
        assert_eq!(parse(&[flag, "--listen", "127.0.0.1:1"]), Some(true));
        assert_eq!(parse(&[&format!("{flag}=false")]), Some(false));
        assert_eq!(parse(&[&format!("{flag}=no")]), Some(false));
        if std::env::var_os("IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR").is_none() {
            assert_eq!(parse(&[]), None);
        }
    }
}
