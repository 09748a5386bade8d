//! What sign-in keeps in memory: users' sessions, and the short-lived flows of a browser
//! that is enrolling or signing in (its CSRF token, the pending WebAuthn challenge, the
//! Entra request's state, nonce and PKCE verifier, the authenticator seed being set up).
//!
//! Both are keyed by the SHA-256 of their cookie. A session is only a pointer to its
//! user: every request checks the user again (status, SSO settings), so deactivating a
//! user or turning their SSO off ends their sessions at the next request. A restart
//! signs everyone out, the safe direction.
//!
//! A flow's CSRF token is an HMAC of its cookie under a key of this process, so a page
//! can carry one without anything stored: a flow is stored only once a request that
//! carries the token needs state (a challenge, an Entra request), or an enrolment link
//! was opened. Pages fetched by anyone, any number of times, cost no memory.

use idledger_domain::{DomainId, LinkId, SsoMethod, UserId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a flow (an enrolment or sign-in in progress) lives.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// A WebAuthn ceremony's challenge is good this long: SIGNIN.md's 60 s, the timeout the
/// browser is told too (which it may treat as a hint only).
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// After the Entra step, the second factor must follow within this.
pub const ENTRA_STEP_TTL: Duration = Duration::from_secs(300);
/// Sessions in all, and flows in all: past this the least recently used go (a tenth of
/// them at once, so a full map costs one sort per ten thousand inserts, not a scan each).
const MOST: usize = 100_000;
/// A session ends this long after sign-in, however busy (the user signs in again).
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// Sessions of one user: signing in again closes the oldest.
const PER_USER: usize = 16;

/// What a WebAuthn challenge was issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ceremony {
    /// Registering a passkey (enrolment or the user's page).
    Register,
    /// Passwordless sign-in (discoverable: no user named).
    SignIn,
    /// The second factor after Entra.
    SecondFactor,
}

/// An Entra sign-in on its way: what the callback must match.
#[derive(Clone)]
pub struct EntraPending {
    /// The `state` sent.
    pub state: String,
    /// The `nonce` sent.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The user expected back (enrolment), or the one whose name was typed (sign-in); `None`
    /// when the typed name belongs to no one who may sign in this way: the browser goes to
    /// the tenant all the same, so the sign-in page answers alike for every name.
    pub user: Option<UserId>,
    /// The domain whose tenant was asked.
    pub domain: DomainId,
}

/// Names the user only: state, nonce and verifier are secrets of the request.
impl std::fmt::Debug for EntraPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraPending")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A browser's enrolment or sign-in in progress.
#[derive(Default)]
pub struct Flow {
    /// The enrolment this browser opened: the link's secret (to find the way back after
    /// Entra), the user and the link.
    pub enrolment: Option<(String, UserId, LinkId)>,
    /// Pending WebAuthn challenges, the newest last: one per press of a button, so that
    /// two tabs of one browser do not cancel each other's ceremonies.
    challenges: Vec<(Ceremony, [u8; 32], Instant)>,
    /// A pending Entra request.
    pub entra: Option<EntraPending>,
    /// The user whose Entra credentials were checked, and when.
    pub entra_user: Option<(UserId, Instant)>,
    /// An authenticator seed shown and not yet confirmed.
    pub totp_seed: Option<Vec<u8>>,
    /// An app's authorization request waiting for this browser to sign in.
    pub authorize: Option<super::authorization::AuthRequest>,
    /// The user asked on `/me` to sign in again (to change their methods): a session
    /// that began before this does not skip the sign-in page.
    pub fresh_sign_in_after: Option<chrono::DateTime<chrono::Utc>>,
    last_seen: Option<Instant>,
}

impl Flow {
    /// The Entra step done for `user`, recently enough.
    pub fn entra_done_for(&self, user: UserId) -> bool {
        self.entra_user
            .is_some_and(|(u, at)| u == user && at.elapsed() < ENTRA_STEP_TTL)
    }

    /// Keeps a new challenge for `ceremony` (the oldest beyond [`PENDING_CHALLENGES`] go).
    pub fn issue_challenge(&mut self, ceremony: Ceremony, challenge: [u8; 32]) {
        self.challenges
            .retain(|(_, _, at)| at.elapsed() < CHALLENGE_TTL);
        if self.challenges.len() >= PENDING_CHALLENGES {
            self.challenges.remove(0);
        }
        self.challenges.push((ceremony, challenge, Instant::now()));
    }

    /// Takes a pending challenge of `ceremony`, if still fresh: the one the response
    /// claims to answer (`answered`, unauthenticated: verification checks it), used once.
    /// A response that names none pending (expired, taken, made up) takes nothing: another
    /// tab's ceremony goes on. One whose challenge cannot be read at all takes the newest,
    /// which it then fails against.
    pub fn take_challenge(
        &mut self,
        ceremony: Ceremony,
        answered: Option<&[u8]>,
    ) -> Option<[u8; 32]> {
        self.challenges
            .retain(|(_, _, at)| at.elapsed() < CHALLENGE_TTL);
        let mut of_ceremony =
            (0..self.challenges.len()).filter(|i| self.challenges[*i].0 == ceremony);
        let i = match answered {
            Some(a) => of_ceremony.find(|i| self.challenges[*i].1.as_slice() == a)?,
            None => of_ceremony.next_back()?,
        };
        Some(self.challenges.remove(i).1)
    }

    /// Drops every pending challenge.
    pub fn clear_challenges(&mut self) {
        self.challenges.clear();
    }
}

/// Challenges a flow keeps pending at once (tabs of one browser).
const PENDING_CHALLENGES: usize = 4;

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct UserSession {
    /// Who.
    pub user: UserId,
    /// What unsafe requests must echo.
    pub csrf: String,
    /// The method signed in with.
    pub method: SsoMethod,
    /// RFC 8176 method references.
    pub amr: Vec<String>,
    /// When the user authenticated.
    pub auth_time: chrono::DateTime<chrono::Utc>,
    /// The session's id as ID tokens carry it (`sid`).
    pub sid: String,
    /// The log's head when it opened: an event after it may end it.
    pub opened_position: u64,
    opened: Instant,
    last_seen: Instant,
}

/// Random text for cookies and tokens: 256 bits, base64url.
pub fn random_text() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Users' sessions and browsers' flows.
pub struct Store {
    idle: Duration,
    sessions: Mutex<HashMap<[u8; 32], UserSession>>,
    flows: Mutex<HashMap<[u8; 32], Flow>>,
    csrf_key: ring::hmac::Key,
}

/// Drops the least recently seen tenth of `map` when it is full.
fn make_room<V>(map: &mut HashMap<[u8; 32], V>, seen: impl Fn(&V) -> Option<Instant>) {
    if map.len() < MOST {
        return;
    }
    let mut ages: Vec<(Option<Instant>, [u8; 32])> =
        map.iter().map(|(k, v)| (seen(v), *k)).collect();
    ages.sort_unstable();
    for (_, k) in ages.into_iter().take(MOST / 10) {
        map.remove(&k);
    }
}

impl Store {
    /// Sessions end after `idle` without a request.
    pub fn new(idle: Duration) -> Store {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Store {
            idle,
            sessions: Mutex::new(HashMap::new()),
            flows: Mutex::new(HashMap::new()),
            csrf_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        }
    }

    /// A new flow cookie (nothing stored yet).
    pub fn new_flow(&self) -> String {
        random_text()
    }

    /// The CSRF token of the flow of `cookie`: HMAC-SHA-256 of the cookie.
    pub fn csrf_of(&self, cookie: &str) -> String {
        use base64::Engine;
        let tag = ring::hmac::sign(&self.csrf_key, cookie.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Runs `f` on the flow of `cookie`, stored now if it was not (callers have checked
    /// the flow's CSRF token, or hold an enrolment link).
    pub fn with_flow<T>(&self, cookie: &str, f: impl FnOnce(&mut Flow) -> T) -> T {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(cookie);
        let stale = flows
            .get(&k)
            .is_some_and(|f| f.last_seen.is_none_or(|t| t.elapsed() >= FLOW_TTL));
        if stale {
            flows.remove(&k);
        }
        if !flows.contains_key(&k) {
            make_room(&mut flows, |f| f.last_seen);
        }
        let flow = flows.entry(k).or_default();
        flow.last_seen = Some(Instant::now());
        f(flow)
    }

    /// Runs `f` on the stored flow of `cookie`, if there is one (nothing is stored).
    pub fn with_stored_flow<T>(&self, cookie: &str, f: impl FnOnce(&mut Flow) -> T) -> Option<T> {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let flow = flows.get_mut(&key(cookie))?;
        if flow.last_seen.is_none_or(|t| t.elapsed() >= FLOW_TTL) {
            return None;
        }
        flow.last_seen = Some(Instant::now());
        Some(f(flow))
    }

    /// Ends the flow of `cookie`.
    pub fn end_flow(&self, cookie: &str) {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        flows.remove(&key(cookie));
    }

    /// Opens a session; answers its cookie.
    pub fn open(
        &self,
        user: UserId,
        method: SsoMethod,
        amr: Vec<String>,
        auth_time: chrono::DateTime<chrono::Utc>,
        opened_position: u64,
    ) -> String {
        let cookie = random_text();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let idle = self.idle;
        if sessions.len() >= MOST {
            sessions.retain(|_, s| s.last_seen.elapsed() < idle);
        }
        make_room(&mut sessions, |s| Some(s.last_seen));
        let oldest = |m: &HashMap<[u8; 32], UserSession>, of: Option<UserId>| {
            m.iter()
                .filter(|(_, s)| of.is_none_or(|u| s.user == u))
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
        };
        while sessions.values().filter(|s| s.user == user).count() >= PER_USER {
            match oldest(&sessions, Some(user)) {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            key(&cookie),
            UserSession {
                user,
                csrf: random_text(),
                method,
                amr,
                auth_time,
                sid: uuid::Uuid::new_v4().to_string(),
                opened_position,
                opened: Instant::now(),
                last_seen: Instant::now(),
            },
        );
        cookie
    }

    /// The live session of `cookie`, marked as used now.
    pub fn find(&self, cookie: &str) -> Option<UserSession> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(cookie);
        let s = sessions.get_mut(&k)?;
        if s.last_seen.elapsed() >= self.idle || s.opened.elapsed() >= SESSION_MAX {
            sessions.remove(&k);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    /// Ends the session of `cookie`.
    pub fn close(&self, cookie: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&key(cookie));
    }

    /// Ends every session of `user` (they may no longer sign in).
    pub fn close_all_of(&self, user: UserId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.user != user);
    }

    /// Ends the sessions with `sid` (RP-initiated logout).
    pub fn close_sid(&self, sid: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.sid != sid);
    }

    /// Whether a live session has `sid`.
    pub fn sid_open(&self, sid: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.values().any(|s| {
            s.sid == sid && s.last_seen.elapsed() < self.idle && s.opened.elapsed() < SESSION_MAX
        })
    }

    /// Ends every session of `user` but the one of `cookie` (a method was removed: a
    /// browser that used it is signed out, the one that removed it stays).
    pub fn close_others_of(&self, user: UserId, cookie: &str) {
        let keep = key(cookie);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|k, s| s.user != user || *k == keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued_ago(secs: u64) -> Flow {
        Flow {
            challenges: vec![(
                Ceremony::SignIn,
                [7; 32],
                Instant::now() - Duration::from_secs(secs),
            )],
            ..Flow::default()
        }
    }

    #[test]
    fn a_challenge_answers_one_ceremony_once_within_sixty_seconds() {
        let mut fresh = issued_ago(50);
        assert_eq!(
            fresh.take_challenge(Ceremony::Register, Some(&[7; 32])),
            None,
            "another ceremony"
        );
        let mut fresh = issued_ago(50);
        assert_eq!(fresh.take_challenge(Ceremony::SignIn, None), Some([7; 32]));
        assert_eq!(
            fresh.take_challenge(Ceremony::SignIn, Some(&[7; 32])),
            None,
            "used once"
        );
        assert_eq!(
            issued_ago(61).take_challenge(Ceremony::SignIn, Some(&[7; 32])),
            None
        );
    }

    #[test]
    fn each_pending_challenge_is_taken_by_the_response_that_names_it() {
        let mut flow = Flow::default();
        for n in 1..=5u8 {
            flow.issue_challenge(Ceremony::Register, [n; 32]);
        }
        flow.issue_challenge(Ceremony::SignIn, [9; 32]);
        // Four are kept: 3, 4 and 5 of the ceremony, and the sign-in's.
        let take = |f: &mut Flow, n: u8| f.take_challenge(Ceremony::Register, Some(&[n; 32]));
        assert_eq!(take(&mut flow, 4), Some([4; 32]), "the one named");
        // One named that is gone (or made up) takes nothing.
        assert_eq!(take(&mut flow, 1), None);
        assert_eq!(take(&mut flow, 4), None, "used once");
        flow.issue_challenge(Ceremony::Register, [6; 32]);
        assert_eq!(take(&mut flow, 3), Some([3; 32]));
        assert_eq!(take(&mut flow, 5), Some([5; 32]));
        // An unreadable one takes the newest, and fails against it.
        assert_eq!(flow.take_challenge(Ceremony::Register, None), Some([6; 32]));
        assert_eq!(flow.take_challenge(Ceremony::Register, None), None);
        assert_eq!(flow.take_challenge(Ceremony::SignIn, None), Some([9; 32]));
    }
}
