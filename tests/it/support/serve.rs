//! `idledger serve` as a child process (`Serve`), for tests that kill and restart it.

use super::{free_port, idledger};
use std::time::{Duration, Instant};

/// A `serve` child process on a free port, and an admin's client of it.
pub struct Serve {
    pub child: std::process::Child,
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Serve {
    pub async fn start(data: &std::path::Path, crash_at: Option<&str>) -> Serve {
        Self::start_with(data, crash_at, &[]).await
    }

    pub async fn start_with(
        data: &std::path::Path,
        crash_at: Option<&str>,
        env: &[(&str, &str)],
    ) -> Serve {
        Self::start_under(&[], data, crash_at, env).await
    }

    /// `serve` run by `wrapper` (a program and its arguments, such as strace), in a process
    /// group of its own so that [`Serve::stop_group`] ends both.
    pub async fn start_under(
        wrapper: &[&str],
        data: &std::path::Path,
        crash_at: Option<&str>,
        env: &[(&str, &str)],
    ) -> Serve {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = match wrapper.split_first() {
            None => idledger(),
            Some((program, args)) => {
                use std::os::unix::process::CommandExt;
                let mut cmd = std::process::Command::new(program);
                cmd.args(args)
                    .arg(idledger().get_program())
                    .envs(idledger().get_envs().filter_map(|(k, v)| Some((k, v?))))
                    .process_group(0);
                cmd
            }
        };
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .env("IDLEDGER_ROTATION_CHECK_SECS", "1")
            .env("IDLEDGER_ROTATION_RETRY_SECS", "0.05")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(point) = crash_at {
            cmd.env("IDLEDGER_TEST_CRASH_AT", point);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "serve did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Serve {
            child,
            url,
            token,
            http,
        }
    }

    /// SIGTERM, and waits for the graceful shutdown to finish.
    pub fn stop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.child.wait().unwrap();
    }

    /// SIGTERM to the process group [`Serve::start_under`] made, and waits for its head.
    pub fn stop_group(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        self.child.wait().unwrap();
    }

    /// A GET with the admin token, answered as it comes (any status).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// Appends `n` events (auditor tokens named `{name} {i}`): a log that grows.
    pub async fn grow(&self, n: u64, name: &str) {
        for i in 0..n {
            self.call(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(serde_json::json!({"role": "auditor", "name": format!("{name} {i}")})),
            )
            .await;
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }
}

impl Drop for Serve {
    /// A failed test leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
