//! SIGKILL a process appending under load, again and again; every acknowledged event
//! must survive and the chain must verify.

use crate::support::*;
use idledger::store::{EventLog, SledEventLog};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn ack_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acks = dir.path().join("acks.txt");
    let data = dir.path().join("data");
    for round in 0..6 {
        let before = ack_lines(&acks);
        let mut child = idledger()
            .args([
                "bench",
                "append",
                "--events",
                "10000000",
                "--writers",
                "32",
                "--event-bytes",
                "200",
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--ack-file")
            .arg(&acks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different depth each round, always mid-stream.
        let target = before + 500 + round * 700;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ack_lines(&acks) < target {
            assert!(Instant::now() < deadline, "round {round}: no progress");
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let text = std::fs::read_to_string(&acks).unwrap();
    // A line may be cut by the kill; only whole lines count as acknowledged.
    let acked: HashMap<u64, String> = text
        .lines()
        .filter_map(|l| {
            let (p, id) = l.split_once(' ')?;
            let p: u64 = p.parse().ok()?;
            (id.len() == 36).then(|| (p, id.to_owned()))
        })
        .collect();
    assert!(
        acked.len() > 3000,
        "too few acknowledgements: {}",
        acked.len()
    );
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "{report}");
    let log = SledEventLog::open(&data).unwrap();
    let all: HashMap<u64, String> = log
        .envelopes(1)
        .map(|e| e.map(|e| (e.position, e.event_id.hyphenated().to_string())))
        .collect::<Result<_, _>>()
        .unwrap();
    for (pos, id) in &acked {
        assert_eq!(
            all.get(pos),
            Some(id),
            "acknowledged event at {pos} is missing or different"
        );
    }
    assert_eq!(log.head().position, all.len() as u64);
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_serve_loses_no_answered_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut answered: Vec<String> = Vec::new();
    for round in 0..3 {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut child = idledger()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{url}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "serve did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut flood = Vec::new();
        for w in 0..16 {
            let (http, url, token, tx) = (http.clone(), url.clone(), token.clone(), tx.clone());
            flood.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("r{round}-w{w}-n{i}.onmicrosoft.com");
                    let sent = http
                        .post(format!("{url}/v1/domains"))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"domain": name}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            if let Ok(body) = r.json::<serde_json::Value>().await {
                                let _ = tx.send(body["id"].as_str().unwrap_or_default().to_owned());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        drop(tx);
        // Kill mid-flood, at a different depth each round.
        let want = answered.len() + 150 + round * 50;
        while answered.len() < want {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the flood stalled")
            {
                Some(id) => answered.push(id),
                None => panic!("every writer stopped before the kill"),
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for f in flood {
            let _ = f.await;
        }
        // Answers that arrived just before the kill count too.
        while let Ok(id) = rx.try_recv() {
            answered.push(id);
        }
    }
    assert!(answered.len() >= 450, "{} answered", answered.len());
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "{report}");
    let log = SledEventLog::open(&data).unwrap();
    for id in &answered {
        let stream = idledger_domain::StreamId::new(format!("domain-{id}")).unwrap();
        assert!(
            log.stream_version(&stream) >= 1,
            "domain {id} was answered 2xx but is not in the log"
        );
    }
}
