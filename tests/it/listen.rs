//! The listener against clients that hold connections: a header sent slowly, connections
//! opened and left silent, more of them than the server allows.

use crate::support::serve::Serve;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the server does with a connection within `wait`: closes it (`Some(bytes it sent
/// first)`) or keeps it open (`None`).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(serve: &Serve) -> TcpStream {
    TcpStream::connect(serve.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// A request whose head is whole but whose body never comes is cut at the request
/// timeout on every kind of route (API, console, sign-in, OIDC), not held for ever: such
/// requests need no credential, and a few would take every connection.
#[tokio::test]
async fn a_body_that_never_comes_is_cut_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(
        &dir.path().join("data"),
        None,
        &[
            ("IDLEDGER_HEADER_READ_TIMEOUT_SECS", "1"),
            ("IDLEDGER_REQUEST_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let mut stalled = Vec::new();
    for path in [
        "/v1/domains",
        "/console/sign-in",
        "/signin/passkey/options",
        "/token",
    ] {
        let mut s = connect(&serve).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push((path, s));
    }
    for (path, mut s) in stalled {
        assert!(
            closed_within(&mut s, Duration::from_secs(6))
                .await
                .is_some(),
            "{path}: a request without its body held the connection"
        );
    }
}

#[tokio::test]
async fn slow_and_silent_clients_cannot_hold_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(
        &dir.path().join("data"),
        None,
        &[
            ("IDLEDGER_HEADER_READ_TIMEOUT_SECS", "1"),
            ("IDLEDGER_MAX_CONNECTIONS", "4"),
        ],
    )
    .await;
    // The readiness probe's keep-alive connection is idle now; it goes after a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A header sent a byte at a time never completes: the connection is cut at the
    // timeout, however busy the client looks.
    let mut slow = connect(&serve).await;
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..40 {
            if slow.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .unwrap();
    let cut = closed_within(&mut slow, Duration::from_secs(3)).await;
    let cut = cut.expect("a header sent for 4 s is cut after the 1 s timeout");
    let head = String::from_utf8_lossy(&cut);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "cut with {head:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Four silent connections take every slot: a fifth client waits ...
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(&serve).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = connect(&serve).await;
    let asked = Instant::now();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(400), fifth.read(&mut first)).await;
    assert!(
        early.is_err(),
        "a fifth connection was served at a cap of 4"
    );
    // ... and is served once the silent ones are cut at the timeout.
    let answer = closed_within(&mut fifth, Duration::from_secs(5))
        .await
        .expect("the fifth connection is served and closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(asked.elapsed() < Duration::from_secs(4));
    for mut s in silent {
        assert!(
            closed_within(&mut s, Duration::from_secs(2))
                .await
                .is_some(),
            "a silent connection outlived the timeout"
        );
    }

    // The operator sees the cap.
    let metrics = serve.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("idledger_http_connections_max 4"),
        "{metrics}"
    );
    assert!(metrics.contains("idledger_http_connections_open "));
}
