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
