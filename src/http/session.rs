//! Console sessions: an admin or auditor pastes a token once and gets a cookie. A session
//! is only a pointer to its token: every request looks the token up again, so revoking
//! the token ends the session at its next request. Sessions live in memory (a restart
//! signs everyone out, which is the safe direction) and end after `idle` without use, and
//! after [`MAX_AGE`] however busy.

use idledger_domain::TokenId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name over plain HTTP (loopback, or behind a proxy).
pub const COOKIE: &str = "idl_session";

/// The session cookie's name over HTTPS: the `__Host-` prefix makes browsers refuse one
/// planted by a sibling subdomain or scoped to a path.
pub const SECURE_COOKIE: &str = "__Host-idl_session";

/// The session cookie's name for a server served over HTTPS (`https`) or not.
pub fn cookie_name(https: bool) -> &'static str {
    if https {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// Sessions one token may hold: signing in again closes its oldest.
const PER_TOKEN: usize = 16;

/// Sessions in all: past this, the least recently used is closed.
const MOST: usize = 10_000;

/// The longest a session lives, used or not (as users' sign-in sessions): a stolen cookie
/// kept busy does not last for ever.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// How long a one-time sign-in link (the demo prints one) stays usable.
const TICKET_TTL: Duration = Duration::from_secs(600);

struct Session {
    token_id: TokenId,
    csrf: String,
    opened: Instant,
    last_seen: Instant,
}

/// Open sessions and one-time sign-in tickets, each keyed by the SHA-256 of its secret
/// (what an attacker reading memory dumps would find is not a usable cookie).
pub struct Sessions {
    idle: Duration,
    max_age: Duration,
    open: Mutex<HashMap<[u8; 32], Session>>,
    tickets: Mutex<HashMap<[u8; 32], (TokenId, Instant)>>,
}

/// A session as a request sees it.
#[derive(Clone)]
pub struct SessionInfo {
    /// The token the session stands for.
    pub token_id: TokenId,
    /// What unsafe requests must echo in `X-CSRF-Token`.
    pub csrf: String,
}

/// The CSRF token guards the session: not for log lines.
impl std::fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInfo")
            .field("token_id", &self.token_id)
            .field("csrf", &"***")
            .finish()
    }
}

fn random_text() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Sessions {
    /// No sessions yet; each ends after `idle` without a request, and after [`MAX_AGE`].
    pub fn new(idle: Duration) -> Sessions {
        Sessions::with_max_age(idle, MAX_AGE)
    }

    /// No sessions yet; each ends after `idle` without a request, and after `max_age`.
    pub fn with_max_age(idle: Duration, max_age: Duration) -> Sessions {
        Sessions {
            idle,
            max_age,
            open: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session for `token_id`; answers the cookie's value.
    pub fn open(&self, token_id: TokenId) -> String {
        let cookie = random_text();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| self.live(s));
        // Bounded, so a token holder signing in in a loop cannot grow the map.
        let oldest = |open: &HashMap<[u8; 32], Session>, of: Option<TokenId>| {
            open.iter()
                .filter(|(_, s)| of.is_none_or(|t| s.token_id == t))
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
        };
        while open.values().filter(|s| s.token_id == token_id).count() >= PER_TOKEN {
            match oldest(&open, Some(token_id)) {
                Some(k) => open.remove(&k),
                None => break,
            };
        }
        while open.len() >= MOST {
            match oldest(&open, None) {
                Some(k) => open.remove(&k),
                None => break,
            };
        }
        open.insert(
            key(&cookie),
            Session {
                token_id,
                csrf: random_text(),
                opened: Instant::now(),
                last_seen: Instant::now(),
            },
        );
        cookie
    }

    /// The live session of `cookie`, marked as used now (a page the admin opened).
    pub fn find(&self, cookie: &str) -> Option<SessionInfo> {
        let found = self.peek(cookie)?;
        self.touch(cookie);
        Some(found)
    }

    /// The live session of `cookie`, not marked as used: a request is use only once it
    /// passed its checks, and only when the admin made it ([`Sessions::touch`]).
    pub fn peek(&self, cookie: &str) -> Option<SessionInfo> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(cookie);
        let session = open.get(&k)?;
        if !self.live(session) {
            open.remove(&k);
            return None;
        }
        Some(SessionInfo {
            token_id: session.token_id,
            csrf: session.csrf.clone(),
        })
    }

    /// Marks the session of `cookie` as used now.
    pub fn touch(&self, cookie: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = open.get_mut(&key(cookie)) {
            s.last_seen = Instant::now();
        }
    }

    /// How long the session of `cookie` has gone unused (tests watch the idle clock).
    pub fn unused_for(&self, cookie: &str) -> Option<Duration> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&key(cookie)).map(|s| s.last_seen.elapsed())
    }

    /// The session of `cookie` is open (looked at without counting as use: an event
    /// stream's checks must not keep an idle session alive).
    pub fn is_open(&self, cookie: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&key(cookie)).is_some_and(|s| self.live(s))
    }

    fn live(&self, s: &Session) -> bool {
        s.last_seen.elapsed() < self.idle && s.opened.elapsed() < self.max_age
    }

    /// Ends the session of `cookie`.
    pub fn close(&self, cookie: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&key(cookie));
    }

    /// A one-time sign-in secret for `token_id`, usable once within ten minutes.
    pub fn ticket(&self, token_id: TokenId) -> String {
        let ticket = random_text();
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets.retain(|_, (_, at)| at.elapsed() < TICKET_TTL);
        tickets.insert(key(&ticket), (token_id, Instant::now()));
        ticket
    }

    /// Whether `ticket` would still sign in (it stays unused).
    pub fn ticket_valid(&self, ticket: &str) -> bool {
        let tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets
            .get(&key(ticket))
            .is_some_and(|(_, at)| at.elapsed() < TICKET_TTL)
    }

    /// The token of `ticket`, which is used up by this call.
    pub fn redeem(&self, ticket: &str) -> Option<TokenId> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let (token_id, at) = tickets.remove(&key(ticket))?;
        (at.elapsed() < TICKET_TTL).then_some(token_id)
    }
}

/// Compares two strings in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_idle_and_a_ticket_works_once() {
        let id = TokenId(uuid::Uuid::from_u128(7));
        let s = Sessions::new(Duration::from_millis(50));
        let c = s.open(id);
        assert_eq!(s.find(&c).unwrap().token_id, id);
        assert!(s.find("forged").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.find(&c).is_none());
        let t = s.ticket(id);
        assert_eq!(s.redeem(&t), Some(id));
        assert_eq!(s.redeem(&t), None);
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
        // One token's sessions are bounded: the oldest goes.
        let s = Sessions::new(Duration::from_secs(60));
        let first = s.open(id);
        for _ in 0..PER_TOKEN {
            s.open(id);
        }
        assert!(s.find(&first).is_none());
        assert_eq!(s.open.lock().unwrap().len(), PER_TOKEN);
    }

    #[test]
    fn a_busy_session_still_ends_at_its_max_age() {
        let id = TokenId(uuid::Uuid::from_u128(7));
        let s = Sessions::with_max_age(Duration::from_secs(60), Duration::from_millis(80));
        let c = s.open(id);
        let opened = Instant::now();
        while opened.elapsed() < Duration::from_millis(60) {
            assert!(s.find(&c).is_some(), "in use and young");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(30));
        assert!(!s.is_open(&c));
        assert!(s.find(&c).is_none());
    }
}
