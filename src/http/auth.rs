//! Bearer tokens: who is calling, and with which role.

use super::error::ApiError;
use super::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use idledger_domain::{Actor, Hash, KeyId, Role, TokenId};
use sha2::{Digest, Sha256};

/// Sent by console pages with requests they make on their own, long after the admin's
/// last key or click: such a request does not count as use of the session.
pub const BACKGROUND: &str = "x-idledger-background";

/// The caller, from a live token.
#[derive(Clone)]
pub struct Principal {
    /// The token's id (its text is never stored, only its hash).
    pub token_id: TokenId,
    /// What the token may do.
    pub role: Role,
    /// For agents, the keys it serves.
    pub key_ids: Vec<KeyId>,
    /// The console session the call came through, if any (its cookie's value): a
    /// long-lived answer ends when the session does, not only when the token does.
    pub session: Option<String>,
}

/// The session cookie is a bearer secret: a `?who` in a log line must not carry it.
impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("token_id", &self.token_id)
            .field("role", &self.role)
            .field("key_ids", &self.key_ids)
            .field("session", &self.session.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The credentials of an `Authorization` value in `scheme` (`Bearer`, `Basic`): schemes
/// are case-insensitive (RFC 9110 §11.1).
pub fn credentials<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (named, rest) = authorization.split_once(' ')?;
    named.eq_ignore_ascii_case(scheme).then_some(rest)
}

impl Principal {
    /// Refuses the call unless the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the {} role may not do this",
                self.role.as_str()
            )))
        }
    }

    /// The caller's token is still live, and so is the console session it came through
    /// (if any): long-lived responses ask again while they run.
    pub fn still_live(&self, s: &AppState) -> bool {
        // Stopped projections no longer learn of revocations: nothing is live then.
        if s.engine.projector.stopped() {
            return false;
        }
        let token = s
            .engine
            .projector
            .read()
            .tokens
            .get(self.token_id)
            .is_some_and(|t| t.revoked_at.is_none());
        token
            && self
                .session
                .as_deref()
                .is_none_or(|c| s.sessions.is_open(c))
    }

    /// [`Principal::still_live`] as an answer: 401 once revoked, 503 when the projections
    /// stopped and cannot tell.
    pub fn live(&self, s: &AppState) -> Result<(), ApiError> {
        if self.still_live(s) {
            Ok(())
        } else if s.engine.projector.stopped() {
            Err(ApiError::Unavailable(
                "the projections stopped; see the server's log".into(),
            ))
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// The actor recorded on events this caller causes.
    pub fn actor(&self) -> Actor {
        Actor::Token(self.token_id, self.role)
    }
}

/// SHA-256 of a token's text: what the log keeps.
pub fn token_hash(token: &str) -> Hash {
    Hash(Sha256::digest(token.as_bytes()).into())
}

/// A new token's secret text: `idl_` and 32 random bytes, base64url.
pub fn new_token_text() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "idl_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Principal {
    /// The caller of a request: its bearer token, or else its console session. A session
    /// stands for its token (revoked: the session is over) and an unsafe method through it
    /// must carry the session's CSRF token in `X-CSRF-Token`.
    pub fn of_request(parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| credentials(v, "Bearer"));
        let p = state.engine.projector.read();
        let mut through_session = None;
        let t = match bearer {
            Some(token) => p
                .tokens
                .by_hash(&token_hash(token.trim()))
                .ok_or(ApiError::Unauthorized)?,
            None => {
                let cookie = super::session::cookie(
                    &parts.headers,
                    super::session::cookie_name(state.secure_cookies()),
                )
                .ok_or(ApiError::Unauthorized)?;
                let session = state.sessions.peek(cookie).ok_or(ApiError::Unauthorized)?;
                if !parts.method.is_safe() {
                    let sent = parts
                        .headers
                        .get("x-csrf-token")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if !super::session::same_secret(sent, &session.csrf) {
                        return Err(ApiError::Forbidden(
                            "X-CSRF-Token: missing or not this session's".into(),
                        ));
                    }
                }
                let t = p
                    .tokens
                    .get(session.token_id)
                    .filter(|t| t.revoked_at.is_none())
                    .ok_or(ApiError::Unauthorized)?;
                if !matches!(t.role, Role::Admin | Role::Auditor) {
                    return Err(ApiError::Unauthorized);
                }
                through_session = Some(cookie.to_owned());
                t
            }
        };
        Ok(Principal {
            token_id: t.id,
            role: t.role,
            key_ids: t.key_ids.clone(),
            session: through_session,
        })
    }

    /// Counts a request that passed every check (its role's too) as use of the session it
    /// came through, which starts the session's idle clock again; unless the page made
    /// the request on its own (a live refresh, a poll, an event stream, which cannot mark
    /// its requests and reconnects by itself): an open tab is not an admin at work, and
    /// must not hold an idle session open.
    pub fn note_use(&self, parts: &Parts, state: &AppState) {
        let Some(cookie) = &self.session else {
            return;
        };
        let event_stream = parts
            .headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        if !parts.headers.contains_key(BACKGROUND) && !event_stream {
            state.sessions.touch(cookie);
        }
    }
}

/// Handlers read the caller the access layer resolved (and checked the role of) before
/// any extractor ran: one lookup per request, one place that decides access.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(p) => Ok(p.clone()),
            None => {
                let who = Principal::of_request(parts, state)?;
                who.note_use(parts, state);
                Ok(who)
            }
        }
    }
}

/// How often a long-lived response checks its caller's token at the least.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// `inner` until the caller's token is revoked: checked before every item and at least
/// once every [`RECHECK`] while nothing comes. On revocation the stream ends after `last`
/// (an error, for bodies that must not pass for complete) or at once.
pub fn until_revoked<S>(
    inner: S,
    state: AppState,
    who: Principal,
    last: Option<S::Item>,
) -> impl futures_util::Stream<Item = S::Item> + Send
where
    S: futures_util::Stream + Send + Unpin + 'static,
    S::Item: Send + 'static,
{
    use futures_util::StreamExt;
    let tick = tokio::time::interval(RECHECK);
    futures_util::stream::unfold(
        (inner, tick, last, false),
        move |(mut inner, mut tick, mut last, ended)| {
            let (state, who) = (state.clone(), who.clone());
            async move {
                if ended {
                    return None;
                }
                loop {
                    tokio::select! {
                        biased;
                        _ = tick.tick() => {
                            if !who.still_live(&state) {
                                return last.take().map(|l| (l, (inner, tick, None, true)));
                            }
                        }
                        item = inner.next() => {
                            if !who.still_live(&state) {
                                return last.take().map(|l| (l, (inner, tick, None, true)));
                            }
                            return item.map(|i| (i, (inner, tick, last, false)));
                        }
                    }
                }
            }
        },
    )
}
