//! Where stored records come from: a data dir, a running server's event feed (whose
//! items carry the stored record, so all checking is done here and not by the server),
//! or a log this process has open.

use crate::error::Error;
use crate::store::parallel_decode::Reader;
use crate::store::sled_log::open_raw;
use crate::store::StoreError;
use idledger_domain::decode_record;
use std::ops::ControlFlow;
use std::path::PathBuf;

/// Records per page read from a server.
const REMOTE_PAGE: usize = 10_000;

/// Where to read a log from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A data dir (the server must be stopped: sled allows one process).
    DataDir(PathBuf),
    /// A running server's `GET /v1/events`, read with an admin or auditor token.
    Server {
        /// Its base URL.
        url: String,
        /// The bearer token.
        token: String,
    },
}

/// Where a page of the event feed (`GET /v1/events`) ends, whatever its `limit`: past this
/// many bytes of stored records (the one that crosses it, at most 1 MiB, included).
pub const FEED_PAGE_RECORD_BYTES: usize = 32 << 20;

/// The largest page of the event feed read: each record is there base64'd beside its
/// envelope, so under three times its bytes in JSON.
const MAX_FEED_PAGE_BYTES: usize = 4 * FEED_PAGE_RECORD_BYTES;

/// [`crate::body::at_most`], with our error: a server cut off part-way is not reached.
pub async fn body_at_most(resp: reqwest::Response, max: usize) -> Result<Option<Vec<u8>>, Error> {
    crate::body::at_most(resp, max)
        .await
        .map_err(|e| Error::Other(e.without_url().to_string()))
}

/// How long a busy server is waited for, in all, by default (`IDLEDGER_BUSY_WAIT_SECS`).
const BUSY_WAIT_SECS: u64 = 60;

/// `GET url`, asked again while the server says it is busy (503: its places for
/// whole-log reads taken by a backup's stream or an export; or 429), after the
/// `Retry-After` it names (1 to 10 s), for up to `IDLEDGER_BUSY_WAIT_SECS` in all: an
/// auditor's check that meets a running backup waits for a place rather than fail.
pub async fn get_when_free(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    let budget = std::env::var("IDLEDGER_BUSY_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BUSY_WAIT_SECS);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(budget);
    loop {
        let resp = http.get(url).bearer_auth(token).send().await?;
        let busy = matches!(
            resp.status(),
            reqwest::StatusCode::SERVICE_UNAVAILABLE | reqwest::StatusCode::TOO_MANY_REQUESTS
        );
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 10);
        let wake = tokio::time::Instant::now() + std::time::Duration::from_secs(after);
        if !busy || wake > deadline {
            return Ok(resp);
        }
        tokio::time::sleep_until(wake).await;
    }
}

/// Reads stored records `(position, bytes)` in log order, on its own thread while others
/// decode: a data dir, a server's feed, or an open log.
pub type Records = Reader<Error>;

/// Calls `f` with each stored record `(position, bytes)` from `from` on, in log order,
/// until `f` breaks.
pub fn each_record(
    source: &Source,
    from: u64,
    mut f: impl FnMut(u64, &[u8]) -> ControlFlow<()>,
) -> Result<(), Error> {
    let (server, token) = match source {
        Source::DataDir(dir) => {
            let store = open_raw(dir)?;
            for r in store.records() {
                let (pos, bytes) = r?;
                if pos >= from && f(pos, &bytes).is_break() {
                    break;
                }
            }
            return Ok(());
        }
        Source::Server { url, token } => (url.trim_end_matches('/').to_owned(), token),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let mut next = Some(from.max(1));
    let mut handed = 0;
    while let Some(pos) = next {
        let url = format!("{server}/v1/events?from_position={pos}&limit={REMOTE_PAGE}");
        let page: serde_json::Value = rt.block_on(async {
            let other = |e: reqwest::Error| Error::Other(e.without_url().to_string());
            let resp = get_when_free(&http, &url, token).await.map_err(other)?;
            let status = resp.status();
            let body = body_at_most(resp, MAX_FEED_PAGE_BYTES)
                .await?
                .ok_or_else(|| {
                    Error::Other(format!(
                        "{server}'s event feed answered more than {MAX_FEED_PAGE_BYTES} bytes"
                    ))
                })?;
            let body: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Other(format!("{server}'s event feed: {e}")))?;
            if !status.is_success() {
                return Err(Error::Other(format!(
                    "{server} answered {status}: {}",
                    body["error"]["message"]
                )));
            }
            Ok(body)
        })?;
        for item in page["items"].as_array().into_iter().flatten() {
            use base64::Engine;
            let position = item["position"].as_u64().unwrap_or(0);
            let bytes = item["record"]
                .as_str()
                .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
                .ok_or_else(|| {
                    Error::Other(format!("position {position}: the feed carries no record"))
                })?;
            // A server that goes back or stands still would keep an auditor's tool
            // reading forever.
            if position < pos || position <= handed {
                return Err(Error::Other(format!(
                    "{server} sent position {position} after {handed}: the feed goes back"
                )));
            }
            handed = position;
            if f(position, &bytes).is_break() {
                return Ok(());
            }
        }
        next = page["next"].as_str().and_then(|n| n.parse().ok());
        let empty = page["items"].as_array().is_none_or(Vec::is_empty);
        if let (true, Some(n)) = (empty, next) {
            // Positions are dense: an empty page has no next one. A server stepping on
            // one position at a time would keep the tool asking 2^64 times.
            return Err(Error::Other(format!(
                "{server} sent an empty page with a next one at position {n}: the feed does not advance"
            )));
        }
        if let Some(n) = next.filter(|n| *n <= pos || *n <= handed) {
            return Err(Error::Other(format!(
                "{server} sent a next page at position {n} after {}: the feed does not advance",
                handed.max(pos)
            )));
        }
    }
    Ok(())
}

/// Decodes the record at `pos`.
pub fn decode_at(pos: u64, bytes: &[u8]) -> Result<idledger_domain::Envelope, StoreError> {
    decode_record(bytes).map_err(|e| StoreError::Corrupt {
        position: pos,
        reason: e.to_string(),
    })
}

/// The last position of a data dir's log (none for a server: unknown until read).
pub fn last_position(source: &Source) -> Option<u64> {
    match source {
        Source::DataDir(d) => open_raw(d).ok()?.last_position().ok(),
        Source::Server { .. } => None,
    }
}

/// The records of a data dir or of a server's event feed.
pub fn records_of(source: &Source) -> Result<Records, Error> {
    match source {
        Source::DataDir(dir) => {
            let store = open_raw(dir)?;
            let read = store.reader()?;
            // The store stays open for as long as its records are read.
            Ok(Box::new(move |f| {
                let _open = &store;
                read(f).map_err(Error::from)
            }))
        }
        Source::Server { .. } => {
            let source = source.clone();
            Ok(Box::new(move |f| each_record(&source, 1, f)))
        }
    }
}

/// The records of a store opened for reading (the caller keeps it open meanwhile).
pub fn records_of_store(store: &crate::store::sled_log::RawStore) -> Result<Records, Error> {
    let read = store.reader()?;
    Ok(Box::new(move |f| read(f).map_err(Error::from)))
}

/// The records of an open log as committed now (the server's own, or one a benchmark just
/// filled).
pub fn records_of_log(log: &dyn crate::store::EventLog) -> Records {
    let read = log.records(1);
    Box::new(move |f| read(f).map_err(Error::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose feed answers every page with `body`.
    fn feed_answering(body: String) -> (String, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/v1/events",
            axum::routing::get(move || {
                let body = body.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        rt.spawn(async move { axum::serve(listener, app).await });
        (url, rt)
    }

    /// What reading the feed ends with, or `None` when it has not ended after 10 s.
    fn read_feed(url: String) -> Option<Result<usize, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let source = Source::Server {
                url,
                token: "t".into(),
            };
            let mut seen = 0;
            let r = each_record(&source, 1, |_, _| {
                seen += 1;
                ControlFlow::Continue(())
            });
            let _ = tx.send(r.map(|()| seen).map_err(|e| e.to_string()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
    }

    #[test]
    fn a_feed_that_does_not_advance_is_an_error_not_an_endless_read() {
        let item = |p: u64| format!(r#"{{"position":{p},"record":"AA=="}}"#);
        for body in [
            r#"{"items":[],"next":"1"}"#.to_owned(),
            r#"{"items":[],"next":"5"}"#.to_owned(),
            format!(r#"{{"items":[{}],"next":"1"}}"#, item(1)),
            format!(r#"{{"items":[{},{}],"next":"9"}}"#, item(2), item(2)),
        ] {
            let (url, _rt) = feed_answering(body.clone());
            let ended = read_feed(url).unwrap_or_else(|| panic!("still reading {body}"));
            let err = ended.expect_err(&body);
            assert!(err.contains("the feed"), "{body}: {err}");
            if body.contains(r#""next":"5""#) {
                assert!(err.contains("empty page"), "{body}: {err}");
            }
        }
    }

    #[test]
    fn a_feed_that_ends_is_read_to_its_end() {
        let (url, _rt) = feed_answering(r#"{"items":[{"position":1,"record":"AA=="}]}"#.into());
        assert_eq!(read_feed(url), Some(Ok(1)));
    }
}
