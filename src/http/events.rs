//! `/v1/events`: the log itself (admin, auditor), secrets shown as "sealed". Each item also
//! carries the stored `record` (base64), so a client can verify the chain itself.

use super::auth::Principal;
use super::error::{ApiError, ApiQuery};
use super::{page, AppState, Page};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use idledger_domain::envelope::EnvelopeView;
use idledger_domain::Event;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most envelopes per page.
pub const MAX_EVENTS_PAGE: usize = 100_000;

/// `GET /v1/events` parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The first position to list (1).
    from_position: Option<u64>,
    /// Page size, 1 to 100,000 (1000); a page also ends after 32 MiB of stored records,
    /// so follow `next` rather than count items.
    limit: Option<usize>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
}

/// An envelope as the log shows it (the domain's human view) with its stored record,
/// base64, so a client can check the chain itself.
#[derive(Serialize, ToSchema)]
pub struct LoggedEvent {
    #[serde(flatten)]
    envelope: EnvelopeView,
    /// The stored record, base64.
    #[schema(content_encoding = "base64")]
    record: String,
}

/// A page of envelopes from `from_position`.
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Page<LoggedEvent>>, ApiError> {
    s.reach(q.min_position).await?;
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit: 1 to {MAX_EVENTS_PAGE}"
        )));
    }
    let from = q.from_position.unwrap_or(1).max(1);
    let log = s.engine.log.clone();
    let read = move || read_page(&*log, from, limit);
    // A page the size of any collection's is read here; a bigger one (up to 100,000
    // envelopes, hundreds of MB made at once) takes a place among the whole-log reads, on
    // a blocking thread, and goes to no token revoked meanwhile.
    let (items, last) = if limit <= super::MAX_PAGE {
        read()?
    } else {
        s.whole_log_read(&who, read).await??
    };
    let head = crate::store::EventLog::head(&*s.engine.log).position;
    let next = last.filter(|l| *l < head).map(|l| (l + 1).to_string());
    Ok(page(items, next))
}

/// Up to `limit` envelopes from `from`, and the position of the last.
fn read_page(
    log: &dyn crate::store::EventLog,
    from: u64,
    limit: usize,
) -> Result<(Vec<LoggedEvent>, Option<u64>), ApiError> {
    let mut items = Vec::new();
    let mut last = None;
    let mut damaged = None;
    // Records up to 1 MiB each: a page of many ends at a size its reader can hold.
    let mut record_bytes = 0;
    log.records(from)(&mut |pos, bytes| {
        record_bytes += bytes.len();
        match idledger_domain::decode_record(bytes) {
            Ok(env) => {
                items.push(LoggedEvent {
                    envelope: env.view(),
                    record: base64::engine::general_purpose::STANDARD.encode(bytes),
                });
                last = Some(pos);
            }
            Err(e) => damaged = Some(format!("position {pos}: {e}")),
        }
        if damaged.is_some()
            || items.len() == limit
            || record_bytes >= crate::audit::FEED_PAGE_RECORD_BYTES
        {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })?;
    match damaged {
        Some(d) => Err(ApiError::Internal(d)),
        None => Ok((items, last)),
    }
}

/// `GET /v1/events/stream` parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// The first position to send (1); a `Last-Event-ID` header wins over it.
    from_position: Option<u64>,
}

fn sse_event(env: &idledger_domain::Envelope) -> SseEvent {
    SseEvent::default()
        .id(env.position.to_string())
        .event(env.kind())
        .data(env.to_json().to_string())
}

/// Open event streams, bounded: each stream holds a slot until it ends.
pub struct StreamSlots {
    open: std::sync::atomic::AtomicUsize,
    max: usize,
}

/// One open stream's place; given back when dropped.
pub struct StreamSlot(std::sync::Arc<StreamSlots>);

impl StreamSlots {
    /// At most `max` streams at once.
    pub fn new(max: usize) -> std::sync::Arc<StreamSlots> {
        std::sync::Arc::new(StreamSlots {
            open: std::sync::atomic::AtomicUsize::new(0),
            max,
        })
    }

    fn take(self: &std::sync::Arc<Self>) -> Option<StreamSlot> {
        use std::sync::atomic::Ordering::SeqCst;
        self.open
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Server-Sent Events: history from `from_position` (or after `Last-Event-ID`), then live,
/// in order, with no gap and no duplicate. Each event's `id` is its position, so a client
/// reconnects where it stopped. The stream ends at the revocation of the caller's token
/// (nothing appended after it is sent) and is checked against it every second.
pub async fn stream(
    State(s): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<impl IntoResponse, ApiError> {
    use futures_util::StreamExt;
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .and_then(|last| last.checked_add(1))
                .ok_or_else(|| ApiError::BadRequest("Last-Event-ID: not a position".into()))
        })
        .transpose()?;
    let from = resume.or(q.from_position).unwrap_or(1).max(1);
    // A point past the head is refused, as every other position is: a stream from there
    // would say nothing, holding its slot, until the log got there.
    let head = crate::store::EventLog::head(&*s.engine.log).position;
    if from > head.saturating_add(1) {
        return Err(ApiError::BadRequest(format!(
            "from_position: {from} is past the log's head ({head})"
        )));
    }
    let slot = s.event_streams.take().ok_or_else(|| {
        ApiError::Unavailable("too many event streams are open; retry shortly".into())
    })?;
    let token = who.token_id;
    let sub = crate::store::subscribe(s.engine.log.clone(), from);
    let events = futures_util::stream::unfold(
        (sub, false, slot),
        move |(mut sub, revoked, slot)| async move {
            if revoked {
                return None;
            }
            match sub.next_batch(256).await {
                Ok(batch) => {
                    let cut = batch.iter().position(
                        |e| matches!(&e.event, Event::TokenRevoked(t) if t.token_id == token),
                    );
                    let items: Vec<Result<SseEvent, std::convert::Infallible>> = batch
                        [..cut.unwrap_or(batch.len())]
                        .iter()
                        .map(|e| Ok(sse_event(e)))
                        .collect();
                    Some((
                        futures_util::stream::iter(items),
                        (sub, cut.is_some(), slot),
                    ))
                }
                // The log closed (shutdown) or failed: end the stream; the client resumes later.
                Err(_) => None,
            }
        },
    );
    let events = super::auth::until_revoked(Box::pin(events.flatten()), s.clone(), who, None);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
