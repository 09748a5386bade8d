//! Refresh-token families (RFC 6749 §10.4, RFC 9700 §4.14): a code exchange with
//! `offline_access` begins a family; each refresh spends the family's current token and
//! hands out the next. Every token names its generation (0 for the first), so a token of
//! an earlier generation presented again — however many rotations ago — means a copy is
//! abroad, and the whole family ends. Families are folded from the user's stream, so they
//! outlive a restart and a standby holds the same ones.

use super::*;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// A family unused this long has expired (30 days).
pub const REFRESH_IDLE: Duration = Duration::days(30);
/// Families one user holds with one app at most; beginning one more ends that app's least
/// recently used (one app signing in on every page load cannot push out another's).
pub const MAX_FAMILIES_PER_APP: usize = 20;
/// Families one user holds at most, over all apps; beyond, the least recently used ends.
pub const MAX_FAMILIES: usize = 50;

/// One family, as decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    /// The app it was issued to.
    pub app: AppId,
    /// The sign-in session it came from.
    pub sid: String,
    /// What its tokens carry (`None`: begun before families were recorded in full).
    pub grant: Option<TokenGrant>,
    /// The hash of the one token that refreshes it now.
    pub current: Hash,
    /// The current token's generation: how many tokens of the family were spent before it.
    pub generation: u64,
    /// When it was begun or last refreshed.
    pub last_used: DateTime<Utc>,
    /// The user was deactivated, deleted or lost SSO since: it refreshes nothing, ever
    /// (kept only so that the next attempt names the user and is recorded, then it ends).
    pub closed: bool,
}

/// A user's refresh-token families by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Families {
    /// Live families (ended ones are removed).
    pub by_id: BTreeMap<uuid::Uuid, Family>,
    /// When a refusal anyone can cause (see [`throttled_refusal`]) was last recorded, by
    /// app and error code.
    pub throttled_refused_at: BTreeMap<(AppId, &'static str), DateTime<Utc>>,
}

/// The error code of a refusal anyone can cause, recorded at most once a minute per app
/// and code: `access_denied` at the authorization endpoint (RFC 6749 names it there only;
/// any site can send a signed-in browser there), `invalid_client` at the token endpoint
/// (anyone holding a user's code or refresh token can present it without the app's
/// credentials).
pub fn throttled_refusal(reason: &str) -> Option<&'static str> {
    ["access_denied", "invalid_client"]
        .into_iter()
        .find(|code| reason.starts_with(code))
}

impl Families {
    /// Folds one event of the user's stream.
    pub fn evolve(&mut self, e: &Event) {
        match e {
            Event::AppTokensIssued(e) => {
                let Some(r) = &e.refresh else { return };
                // Time is the log's: a family idle past its life at this record is gone,
                // and a fold of the same records always drops the same families.
                self.by_id.retain(|_, f| e.at - f.last_used < REFRESH_IDLE);
                if let Some(f) = self.by_id.get_mut(&r.family) {
                    f.generation += 1;
                    f.current = r.token_hash;
                    f.last_used = e.at;
                    if r.grant.is_some() {
                        f.grant = r.grant.clone();
                    }
                    return;
                }
                let of_app = self.by_id.values().filter(|f| f.app == e.app_id).count();
                if of_app >= MAX_FAMILIES_PER_APP {
                    self.end_least_recently_used(Some(e.app_id));
                }
                if self.by_id.len() >= MAX_FAMILIES {
                    self.end_least_recently_used(None);
                }
                self.by_id.insert(
                    r.family,
                    Family {
                        app: e.app_id,
                        sid: e.sid.clone(),
                        grant: r.grant.clone(),
                        current: r.token_hash,
                        generation: 0,
                        last_used: e.at,
                        closed: false,
                    },
                );
            }
            Event::AppTokensRevoked(e) => {
                self.by_id.remove(&e.family);
            }
            Event::AppTokenRefused(e) => {
                if let Some(f) = e.revoked_family {
                    self.by_id.remove(&f);
                }
                if let Some(code) = throttled_refusal(&e.reason) {
                    self.throttled_refused_at.insert((e.app_id, code), e.at);
                }
            }
            _ => {}
        }
    }

    fn end_least_recently_used(&mut self, of_app: Option<AppId>) {
        let oldest = self
            .by_id
            .iter()
            .filter(|(_, f)| of_app.is_none_or(|a| f.app == a))
            .min_by_key(|(id, f)| (f.last_used, **id))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.by_id.remove(&id);
        }
    }

    /// Every family stops refreshing for good (the user may no longer sign in, or gave up
    /// a way of signing in that any of them may have begun with).
    pub fn close_all(&mut self) {
        for f in self.by_id.values_mut() {
            f.closed = true;
        }
    }

    /// Families begun by a sign-in with another method than `method` stop for good: their
    /// tokens would carry an `acr` and `amr` the user's rules no longer allow.
    pub fn close_other_methods(&mut self, method: SsoMethod) {
        for f in self.by_id.values_mut() {
            if f.grant.as_ref().is_some_and(|g| g.method != method) {
                f.closed = true;
            }
        }
    }
}

/// A refresh request, with everything the IO layer checked (the client's authentication)
/// or made (the next token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshRequest {
    /// The authenticated client's app.
    pub app_id: AppId,
    /// The family the presented token names.
    pub family: uuid::Uuid,
    /// The generation the presented token names.
    pub generation: u64,
    /// The presented token's tag verifies: this server issued it. A family's id and
    /// generations are in the log (auditors read it), so a token of an earlier generation
    /// without it is made up, not a copy, and ends nothing.
    pub issued_here: bool,
    /// SHA-256 of the presented token.
    pub presented: Hash,
    /// SHA-256 of the token to hand out next.
    pub next: Hash,
    /// Domains whose users may use the app.
    pub app_domains: Vec<DomainId>,
    /// The scopes the client asked for, when it named any: none beyond the grant's
    /// (RFC 6749 §6). Fewer narrow the tokens issued now, not the grant the next refresh
    /// token carries.
    pub scope: Option<Vec<String>>,
    /// Now.
    pub at: DateTime<Utc>,
}

/// What an access token names of its grant (`grant_id`, in base64url): the first 16 bytes
/// of a one-way hash of the grant's id. Access tokens reach resource servers; the family id
/// they would otherwise carry is what refresh tokens are checked against.
pub fn grant_digest(grant: uuid::Uuid) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"idledger oidc grant reference\0")
        .chain_update(grant.as_bytes())
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A token an app presents, as far as the IO layer read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    /// A refresh token: the family and generation it names, its hash, and whether this
    /// server's tag on it verifies.
    Refresh {
        /// The family it names.
        family: uuid::Uuid,
        /// The generation it names.
        generation: u64,
        /// SHA-256 of the token.
        presented: Hash,
        /// This server issued it (a family's id and generations are in the log, so a token
        /// without the tag is made up).
        issued_here: bool,
    },
    /// An access token this server signed for the app: the digest of its grant.
    Access {
        /// See [`grant_digest`].
        grant: [u8; 16],
    },
}

impl Families {
    /// The live family of `app` a token belongs to: its current refresh token, one it
    /// spent that this server issued (a copy the app kept), or an access token of its
    /// grant. `None` for anything else: another app's, a made-up one, a family gone.
    pub fn holding(&self, app: AppId, token: &Presented) -> Option<uuid::Uuid> {
        match token {
            Presented::Refresh {
                family,
                generation,
                presented,
                issued_here,
            } => {
                let f = self.by_id.get(family).filter(|f| f.app == app)?;
                let current = f.current == *presented && *generation == f.generation;
                let spent = *generation < f.generation && *issued_here;
                (current || spent).then_some(*family)
            }
            Presented::Access { grant } => self
                .by_id
                .iter()
                .find(|(id, f)| f.app == app && grant_digest(**id) == *grant)
                .map(|(id, _)| *id),
        }
    }
}

/// An app's revocation of a token (RFC 7009), the client's authentication checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeRequest {
    /// The authenticated client's app.
    pub app_id: AppId,
    /// The token it revokes.
    pub token: Presented,
    /// Now.
    pub at: DateTime<Utc>,
}

/// Decides a revocation: the family the token belongs to ends (the app wants the grant
/// gone, whichever of its tokens it kept). Nothing when the token holds no live family of
/// the app: RFC 7009 answers the client the same either way, and only the app holding a
/// grant ends it.
pub fn revoke(s: &user::UserState, r: RevokeRequest) -> Vec<Event> {
    match s.refresh.holding(r.app_id, &r.token) {
        Some(family) => vec![AppTokensRevoked {
            app_id: r.app_id,
            family,
            at: r.at,
        }
        .into()],
        None => Vec::new(),
    }
}

/// Decides a refresh: the next token with the family's grant, a recorded refusal that ends
/// the family, or `NotFound` when the token is nobody's the user's stream knows (nothing
/// recorded: anyone can make up a token).
pub fn decide(
    s: &user::UserState,
    r: RefreshRequest,
    allowed: Result<(), String>,
) -> Result<Vec<Event>, Rejection> {
    let unknown = Rejection::NotFound("refresh token");
    let family = s.refresh.by_id.get(&r.family).ok_or(unknown.clone())?;
    if family.app != r.app_id {
        return Err(unknown);
    }
    let end = |reason: &str| -> Result<Vec<Event>, Rejection> {
        Ok(vec![AppTokenRefused {
            app_id: r.app_id,
            reason: format!("invalid_grant: {reason}"),
            revoked_family: Some(r.family),
            at: r.at,
        }
        .into()])
    };
    if r.generation < family.generation {
        if !r.issued_here {
            return Err(unknown);
        }
        return end("a used refresh token was presented; its family is revoked");
    }
    if family.current != r.presented || r.generation != family.generation {
        return Err(unknown);
    }
    if family.closed {
        return end("the user may no longer sign in; the family ended with that");
    }
    if let Err(why) = allowed {
        return end(&why);
    }
    if !s.domain.is_some_and(|d| r.app_domains.contains(&d)) {
        return end("this app is not open to users of your domain");
    }
    if r.at - family.last_used >= REFRESH_IDLE {
        return end("the refresh token expired");
    }
    let Some(grant) = family.grant.clone() else {
        // Begun before the grant was recorded: what its tokens carried is not known.
        return end("the refresh token predates this server's records; sign in again");
    };
    // Refused without a record and without spending the token: the client may ask again
    // within its grant.
    if let Some(beyond) = r
        .scope
        .iter()
        .flatten()
        .find(|asked| !grant.scope.contains(asked))
    {
        // Named only when it could be a scope (RFC 6749 §3.3): the text reaches the
        // client's `error_description`, which holds no `"`, `\` or non-ASCII (§5.2).
        let scope_token = |s: &str| {
            s.len() <= 100
                && s.bytes()
                    .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        };
        let named = if scope_token(beyond) {
            beyond.as_str()
        } else {
            "a scope"
        };
        return Err(invalid(
            "scope",
            format!("{named} was not granted to this refresh token"),
        ));
    }
    Ok(vec![AppTokensIssued {
        app_id: r.app_id,
        grant: "refresh_token".into(),
        sid: family.sid.clone(),
        refresh: Some(RefreshIssued {
            family: r.family,
            token_hash: r.next,
            grant: Some(grant),
        }),
        at: r.at,
    }
    .into()])
}
