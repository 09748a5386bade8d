//! A `serve` child process: started on a free loopback port, killed when dropped.

use super::ApiClient;
use crate::error::Error;
use std::time::{Duration, Instant};

/// A `serve` child process of this same binary on a free loopback port, with an admin
/// client from its bootstrap token; killed when dropped. Benchmarks use it so that the
/// engine's figures (memory above all) are its own.
pub struct ServeProcess {
    child: std::process::Child,
    /// An admin client of it.
    pub api: ApiClient,
}

impl ServeProcess {
    /// Starts `serve` of this same binary on `data_dir` with extra environment variables.
    pub async fn start(
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Result<ServeProcess, Error> {
        Self::start_program(&std::env::current_exe()?, data_dir, env, None).await
    }

    /// Starts `program serve` (an `idledger` binary) on `data_dir`, new or used before,
    /// with extra environment variables; its log goes to `log` (appended) or nowhere.
    pub async fn start_program(
        program: &std::path::Path,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Result<ServeProcess, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(program);
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        // Benchmarks, the demo and tests: their data dirs are throwaway. (An environment
        // variable rather than the flag, so older builds can be driven the same way.)
        .env("IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR", "true")
        .env("IDLEDGER_REQUEST_TIMEOUT_SECS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(match log {
            None => std::process::Stdio::null(),
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .into(),
        });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let token = loop {
            let ready = reqwest::get(format!("{url}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if let (true, Ok(t)) = (ready, std::fs::read_to_string(data_dir.join("admin.token"))) {
                break t.trim().to_owned();
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                return Err(Error::Other("the serve process did not come up".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(ServeProcess {
            child,
            api: ApiClient::new(url, token),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once (SIGKILL), as a power cut would stop it, and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
