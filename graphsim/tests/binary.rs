//! The `graphsim` binary as the demo and an administrator start it: `--tls` serves HTTPS
//! under a certificate authority it makes, writes that authority where `--tls-ca-out`
//! says, and a client that trusts only that authority gets a token and reads groups.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Kills the simulator when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tenant_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tenants/contoso.json")
}

/// Starts the binary on a free port and answers it with the base URL it printed.
fn start(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_graphsim"))
        .arg("--tenant")
        .arg(tenant_file())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("graphsim starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let running = Running(child);
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .next()
        .expect("graphsim says where it listens")
        .expect("readable stderr");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    // Keep draining stderr so the simulator never blocks writing its log.
    std::thread::spawn(move || lines.for_each(drop));
    (running, url)
}

#[tokio::test]
async fn tls_serves_graph_under_the_authority_it_writes_out() {
    let dir = std::env::temp_dir().join(format!("graphsim-bin-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    let (_sim, url) = start(&["--tls", "--tls-ca-out", ca_file.to_str().unwrap()]);
    assert!(url.starts_with("https://localhost:"), "{url}");
    let ca = std::fs::read(&ca_file).expect("the authority's certificate is written");
    let trusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM certificate"))
        .build()
        .unwrap();
    let tenant: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tenant_file()).unwrap()).unwrap();
    let app = &tenant["applications"][0];
    let token: serde_json::Value = trusting
        .post(format!(
            "{url}/{}/oauth2/v2.0/token",
            tenant["tenantId"].as_str().unwrap()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", app["clientId"].as_str().unwrap()),
            ("client_secret", app["secret"].as_str().unwrap()),
            // Graph takes tokens for itself only: here, the root this simulator serves.
            ("scope", &format!("{url}/.default")),
        ])
        .send()
        .await
        .expect("TLS under the written authority")
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().expect("a token");
    let groups = trusting
        .get(format!("{url}/v1.0/groups"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(groups.status(), reqwest::StatusCode::OK);
    let groups: serde_json::Value = groups.json().await.unwrap();
    assert!(
        groups["value"].as_array().is_some_and(|g| !g.is_empty()),
        "{groups}"
    );
    // Without the authority the certificate is refused: it is the test CA's, not a public one.
    let other = reqwest::Client::new()
        .get(format!("{url}/v1.0/groups"))
        .send()
        .await;
    assert!(
        other.is_err(),
        "a client without the CA must refuse the certificate"
    );
    // Plain HTTP to the TLS port gets no Graph answer.
    let plain = reqwest::Client::new()
        .get(url.replace("https://", "http://") + "/v1.0/groups")
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_tls_it_serves_plain_http() {
    let (_sim, url) = start(&[]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let r = reqwest::Client::new()
        .get(format!("{url}/v1.0/groups"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::UNAUTHORIZED,
        "no token, no groups"
    );
}
