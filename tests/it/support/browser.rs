//! A headless Chromium driven through chromedriver (WebDriver), for the browser tests.

use crate::support::free_port;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// chromedriver as a child process and a WebDriver session of a headless Chromium.
pub struct Browser {
    driver: std::process::Child,
    pub client: Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// chromedriver leads its own process group, so Chromium and its helpers go with it
    /// even when a test fails before closing the session.
    fn drop(&mut self) {
        end_driver(&mut self.driver);
    }
}

fn end_driver(driver: &mut std::process::Child) {
    if let Some(group) = rustix::process::Pid::from_raw(driver.id() as i32) {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let _ = driver.wait();
}

impl Browser {
    /// A few tries: the port `free_port` picked can be taken by another test's listener
    /// before chromedriver binds it, and chromedriver then exits (or another server
    /// answers); under a loaded machine's full test run that happened.
    pub async fn start() -> Browser {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(b) => return b,
                Err(e) => last = e,
            }
        }
        panic!("no WebDriver session: {last}");
    }

    async fn try_start() -> Result<Browser, String> {
        let port = free_port();
        let mut driver = std::process::Command::new(
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()),
        )
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run does)");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Ok(Browser {
                        driver,
                        client,
                        _profile: profile,
                    })
                }
                Err(e) => {
                    let exited = driver.try_wait().ok().flatten();
                    if exited.is_some() || Instant::now() >= deadline {
                        end_driver(&mut driver);
                        return Err(format!("port {port}, chromedriver {exited:?}: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
    }

    pub async fn fill(&self, selector: &str, text: &str) {
        let e = self.css(selector).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, selector: &str) {
        self.css(selector).await.click().await.unwrap();
    }

    /// Waits until the element's text contains `want`; answers the text.
    pub async fn wait_text(&self, selector: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = match self.client.find(Locator::Css(selector)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(want) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{selector}: wanted {want:?}, shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn present(&self, selector: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(selector))
            .await
            .unwrap()
            .is_empty()
    }

    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// A WebDriver command on the session (`session/{id}/{path}`) that fantoccini has no call
/// for: WebDriver's WebAuthn extension (W3C WebAuthn §11: virtual authenticators) and
/// chromedriver's own DevTools passthrough (`goog/cdp/execute`).
#[derive(Debug)]
pub struct SessionCommand {
    pub method: reqwest::Method,
    pub path: String,
    pub body: Option<serde_json::Value>,
}

impl fantoccini::wd::WebDriverCompatibleCommand for SessionCommand {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (reqwest::Method, Option<String>) {
        (
            self.method.clone(),
            self.body.as_ref().map(|b| b.to_string()),
        )
    }
}

impl Browser {
    /// Adds a virtual authenticator that verifies its user and keeps discoverable
    /// credentials: `usb` is a security key (cross-platform), `internal` a platform one.
    pub async fn add_authenticator(&self, transport: &str) -> String {
        let answer = self
            .client
            .issue_cmd(SessionCommand {
                method: reqwest::Method::POST,
                path: "webauthn/authenticator".into(),
                body: Some(json!({
                    "protocol": "ctap2",
                    "transport": transport,
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserConsenting": true,
                    "isUserVerified": true,
                })),
            })
            .await
            .unwrap();
        answer.as_str().unwrap_or_default().to_owned()
    }

    /// Removes a virtual authenticator (its credentials go with it).
    pub async fn remove_authenticator(&self, id: &str) {
        self.client
            .issue_cmd(SessionCommand {
                method: reqwest::Method::DELETE,
                path: format!("webauthn/authenticator/{id}"),
                body: None,
            })
            .await
            .unwrap();
    }

    /// The credentials a virtual authenticator holds.
    pub async fn authenticator_credentials(&self, id: &str) -> Vec<serde_json::Value> {
        let answer = self
            .client
            .issue_cmd(SessionCommand {
                method: reqwest::Method::GET,
                path: format!("webauthn/authenticator/{id}/credentials"),
                body: None,
            })
            .await
            .unwrap();
        answer.as_array().cloned().unwrap_or_default()
    }

    /// Puts `credential` (as [`Self::authenticator_credentials`] answers it: id, private
    /// key, counter) on `authenticator`, made out to the user whose handle is
    /// `user_handle` (base64url): WebDriver's "Add Credential" (W3C WebAuthn §11.5).
    pub async fn add_credential(
        &self,
        authenticator: &str,
        credential: &serde_json::Value,
        user_handle: &str,
    ) {
        self.client
            .issue_cmd(SessionCommand {
                method: reqwest::Method::POST,
                path: format!("webauthn/authenticator/{authenticator}/credential"),
                body: Some(json!({
                    "credentialId": credential["credentialId"],
                    "isResidentCredential": true,
                    "rpId": credential["rpId"],
                    "privateKey": credential["privateKey"],
                    "userHandle": user_handle,
                    "signCount": credential["signCount"],
                })),
            })
            .await
            .unwrap();
    }

    /// The URL the browser shows.
    pub async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }
}
