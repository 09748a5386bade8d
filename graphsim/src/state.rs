//! The simulator's state: the directory, a change log for delta queries, faults to inject,
//! and the log of requests received.

use crate::tenant::{Directory, UserEntry};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Requests kept for `GET /_sim/requests`.
const MAX_REQUEST_LOG: usize = 10_000;

/// Password changes kept for `GET /_sim/password-log`.
const MAX_PASSWORD_LOG: usize = 1_000_000;

/// Settings of a simulator instance.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Default page size of collections and delta rounds.
    pub page_size: usize,
    /// Lifetime of delta tokens.
    pub delta_token_ttl: Duration,
    /// Lifetime of access tokens (`expires_in`).
    pub access_token_ttl: Duration,
    /// How long a user `PATCH` takes (Graph's own latency), for load tests.
    pub patch_latency: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            page_size: 100,
            delta_token_ttl: Duration::from_secs(7 * 24 * 3600),
            access_token_ttl: Duration::from_secs(3599),
            patch_latency: Duration::ZERO,
        }
    }
}

/// One change, for delta rounds.
#[derive(Clone, Debug)]
pub enum Change {
    /// A user joined (`added`) or left a group.
    Member {
        /// Group id.
        group: String,
        /// User id.
        user: String,
        /// Joined or left.
        added: bool,
    },
    /// A user was created (`changed` is `None`) or some of its properties changed.
    User {
        /// User id.
        id: String,
        /// The Graph names of the properties that changed (possibly none: a password).
        changed: Option<Vec<&'static str>>,
    },
    /// A user was deleted.
    UserDeleted(String),
    /// A user's `accountEnabled` named as it once was, though it may have changed since:
    /// a change named again in a later round (GRAPH.md §3).
    UserEnabledRepeated {
        /// User id.
        id: String,
        /// The value named.
        enabled: bool,
    },
    /// A group was (soft-)deleted.
    GroupDeleted(String),
}

/// A fault to inject into Graph routes (`POST /_sim/faults`).
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Only requests with this method.
    #[serde(default)]
    pub method: Option<String>,
    /// Only paths starting with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Answer with this status (and Graph's error body) instead of the real answer.
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` seconds to send (may be fractional).
    #[serde(default)]
    pub retry_after: Option<f64>,
    /// Hold the request this long first.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Cut the connection instead of answering.
    #[serde(default)]
    pub drop_connection: bool,
    /// With `delay_ms`: finish the request even when the caller hung up during the delay,
    /// as Graph (and many outbound proxies) do. Without it a request whose caller is gone
    /// is dropped unserved, which hides late landings.
    #[serde(default)]
    pub complete_after_disconnect: bool,
    /// Serve the request (Graph acts), then cut the connection: the answer is lost.
    #[serde(default)]
    pub drop_after_apply: bool,
    /// Serve the request, send the answer's status, headers and the first half of its
    /// body, then cut the connection: a page lost part-way.
    #[serde(default)]
    pub cut_after_headers: bool,
    /// Serve the request, then point the answer's `@odata.nextLink` back at the request
    /// itself: a paging loop.
    #[serde(default)]
    pub next_link_to_self: bool,
    /// The same, each link made new (a fragment that changes, which no request carries):
    /// the same page again and again under links never seen, as Graph has been seen to
    /// serve a groups delta round.
    #[serde(default)]
    pub next_link_to_self_renamed: bool,
    /// Serve the request, then pad the answer with this many spaces (still valid JSON):
    /// an answer larger than any client should take in.
    #[serde(default)]
    pub pad_bytes: Option<usize>,
    /// How many requests it applies to.
    pub count: u32,
}

/// One request received (`GET /_sim/requests`).
#[derive(Clone, Debug, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers, Authorization removed.
    pub headers: BTreeMap<String, String>,
    /// When (RFC 3339).
    pub time: String,
}

/// Where a delta round resumes: what the opaque `$deltatoken` / `$skiptoken` carry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeltaCursor {
    /// Changes after this sequence number are reported (0 with `full`).
    pub from: u64,
    /// Changes up to this sequence number are in this round.
    pub upto: u64,
    /// Full round: every current member or user.
    pub full: bool,
    /// Entries of this round already served (paging).
    pub offset: usize,
    /// The round's `$filter`.
    pub filter: String,
    /// The round's `$select`.
    pub select: String,
    /// When the token was issued (Unix seconds), for expiry.
    pub issued: i64,
    /// Tokens of an older epoch are expired (`POST /_sim/delta/expire`).
    pub epoch: u64,
}

impl DeltaCursor {
    /// The opaque token form.
    pub fn encode(&self) -> String {
        B64.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses a token.
    pub fn decode(token: &str) -> Option<Self> {
        serde_json::from_slice(&B64.decode(token).ok()?).ok()
    }
}

/// Everything behind the lock.
#[derive(Debug, Default)]
pub struct Inner {
    pub dir: Directory,
    /// Sequence number of the last change.
    pub seq: u64,
    /// Changes in order, with their sequence numbers.
    pub changes: Vec<(u64, Change)>,
    /// Current delta epoch.
    pub epoch: u64,
    /// Faults waiting to fire.
    pub faults: Vec<Fault>,
    /// Requests received, oldest first.
    pub requests: VecDeque<LoggedRequest>,
    /// Every password Graph set, in the order it set them.
    pub password_log: VecDeque<PasswordSet>,
    /// When set, links in answers (`@odata.nextLink`, `@odata.deltaLink`, `Location`)
    /// name this host instead of the one asked: a hostile or broken Graph, for tests.
    pub link_host: Option<String>,
    /// When set, token answers claim this `expires_in` whatever the token's real lifetime.
    pub claimed_expires_in: Option<u64>,
    /// When set, incremental delta rounds name every change in their window on its own,
    /// newest first, instead of one entry per user with the net result: Graph promises no
    /// order and may name a change twice (GRAPH.md §3).
    pub unordered_delta: bool,
    /// Authorization codes issued by sign-ins, until redeemed and expired.
    pub auth_codes: crate::signin::AuthCodes,
    /// Users as they were, served to the next read by id after their deletion: a replica
    /// behind the change Graph already named (GRAPH.md §3, eventual consistency).
    pub stale_reads: BTreeMap<String, UserEntry>,
    /// Users the next read by id misses: a replica that has not seen them yet (created or
    /// restored a moment ago).
    pub unseen_reads: BTreeSet<String>,
    /// (group, user): the next read of the group's member list misses the user, as a
    /// replica behind the user's addition would.
    pub unseen_members: BTreeSet<(String, String)>,
    /// (group, user): full rounds of `groups/delta` leave the member out until the knob is
    /// taken away, as a delta replica behind the user's addition would.
    pub unseen_in_delta: BTreeSet<(String, String)>,
}

/// One password set through Graph's `PATCH /users/{id}` (`GET /_sim/password-log`): what a
/// fault campaign compares with the engine's history. The simulator's own secret, never
/// served by Graph routes.
#[derive(Clone, Debug, Serialize)]
pub struct PasswordSet {
    /// Order of application, from 1.
    pub seq: u64,
    /// When it was set (RFC 3339 with nanoseconds).
    pub time: String,
    /// The user's object id.
    pub user: String,
    /// The password now in force.
    pub password: String,
}

impl Inner {
    /// Records a change.
    pub fn record(&mut self, change: Change) {
        self.seq += 1;
        self.changes.push((self.seq, change));
    }

    /// Adds or replaces a user, recording what changed: an incremental `users/delta`
    /// round names an updated user with only its changed properties, as Graph does.
    pub fn put_user(&mut self, user: UserEntry) {
        let id = user.id.clone();
        let changed = self.dir.users.get(&id).map(|before| before.changed(&user));
        self.dir.users.insert(id.clone(), user);
        self.record(Change::User { id, changed });
    }

    /// Creates an empty group, unless the id is taken (by a live or soft-deleted group).
    pub fn create_group(&mut self, id: String, display_name: String) -> bool {
        if self.dir.groups.contains_key(&id) || self.dir.deleted_groups.contains_key(&id) {
            return false;
        }
        let group = crate::tenant::Group {
            id: id.clone(),
            display_name,
            members: Default::default(),
        };
        self.dir.groups.insert(id, group);
        true
    }

    /// Soft-deletes a group: delta rounds list it as removed from then on.
    pub fn delete_group(&mut self, id: &str) -> bool {
        let Some(group) = self.dir.groups.remove(id) else {
            return false;
        };
        self.dir.deleted_groups.insert(id.to_owned(), group);
        self.record(Change::GroupDeleted(id.to_owned()));
        true
    }

    /// Deletes a user and their memberships, recording both.
    pub fn delete_user(&mut self, id: &str) -> bool {
        if self.dir.users.remove(id).is_none() {
            return false;
        }
        let groups: Vec<String> = self
            .dir
            .groups
            .values()
            .filter(|g| g.members.contains(id))
            .map(|g| g.id.clone())
            .collect();
        for g in groups {
            if let Some(group) = self.dir.groups.get_mut(&g) {
                group.members.remove(id);
            }
            self.record(Change::Member {
                group: g,
                user: id.to_owned(),
                added: false,
            });
        }
        self.record(Change::UserDeleted(id.to_owned()));
        true
    }

    /// Adds or removes a member; false when the group or user is unknown.
    pub fn set_member(&mut self, group: &str, user: &str, added: bool) -> bool {
        if !self.dir.users.contains_key(user) {
            return false;
        }
        let Some(g) = self.dir.groups.get_mut(group) else {
            return false;
        };
        let changed = if added {
            g.members.insert(user.to_owned())
        } else {
            g.members.remove(user)
        };
        if changed {
            self.record(Change::Member {
                group: group.to_owned(),
                user: user.to_owned(),
                added,
            });
        }
        true
    }

    /// Takes one use of the first fault matching a request.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let f = self.faults.iter_mut().find(|f| {
            f.count > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        f.count -= 1;
        let out = f.clone();
        self.faults.retain(|f| f.count > 0);
        Some(out)
    }

    /// Records a password Graph just set.
    pub fn log_password(&mut self, user: &str, password: &str) {
        if self.password_log.len() >= MAX_PASSWORD_LOG {
            self.password_log.pop_front();
        }
        let seq = self.password_log.back().map_or(1, |p| p.seq + 1);
        self.password_log.push_back(PasswordSet {
            seq,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }

    /// Logs a request.
    pub fn log_request(&mut self, r: LoggedRequest) {
        if self.requests.len() >= MAX_REQUEST_LOG {
            self.requests.pop_front();
        }
        self.requests.push_back(r);
    }
}

/// A simulator instance: shared state plus settings and the token key.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Mutex<Inner>>,
    /// Settings.
    pub config: Arc<SimConfig>,
    /// Key signing this instance's access tokens.
    pub token_key: Arc<[u8; 32]>,
    /// User `PATCH` requests being served now, and the most at once (`GET /_sim/stats`).
    pub patches: Arc<PatchGauge>,
    /// What TLS clients said in their hellos (`GET /_sim/stats`).
    pub hellos: Arc<crate::tls::Hellos>,
}

/// Counts concurrent user `PATCH` requests: how a client's concurrency limit is checked.
#[derive(Debug, Default)]
pub struct PatchGauge {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

impl PatchGauge {
    /// One more in flight.
    pub fn enter(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(n, SeqCst);
    }

    /// One fewer in flight.
    pub fn leave(&self) {
        self.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The most in flight at once so far.
    pub fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Sim {
    /// A simulator serving `dir`.
    pub fn new(dir: Directory, config: SimConfig) -> Self {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key);
        Sim {
            inner: Arc::new(Mutex::new(Inner {
                dir,
                ..Inner::default()
            })),
            config: Arc::new(config),
            token_key: Arc::new(key),
            patches: Arc::new(PatchGauge::default()),
            hellos: Arc::default(),
        }
    }

    /// Locks the state.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
