//! The sign-in projection: each user's enrolment link, passkeys, authenticator app and
//! recent sign-ins, with the two lookups sign-in needs — an enrolment link's hash to its
//! user, and a passkey's credential id to its user (discoverable sign-in names no user).

use chrono::{DateTime, Utc};
use idledger_domain::decide::signin::SignInState;
use idledger_domain::events::SignInFailed;
use idledger_domain::{
    Attachment, Envelope, Event, Factor, Hash, LinkId, SealedSecret, SsoMethod, UserId,
};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::VecDeque;

/// Sign-ins kept per user for their page and the console (the log keeps all of them).
pub const RECENT: usize = 50;

/// A registered passkey.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PasskeyView {
    /// Credential id, base64url.
    pub credential_id: String,
    /// The user's name for it.
    pub name: String,
    /// COSE algorithm.
    pub algorithm: i64,
    /// Platform or security key.
    pub attachment: Option<Attachment>,
    /// The COSE public key, sealed with the user's data key.
    #[serde(skip)]
    pub sealed_public_key: SealedSecret,
    /// Signature counter last seen.
    pub sign_count: u32,
    /// When it was registered.
    pub registered_at: DateTime<Utc>,
    /// When it last signed the user in.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// One sign-in attempt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignInRecord {
    /// When.
    pub at: DateTime<Utc>,
    /// `passkey`, `entra`, `totp` (the factor that decided it).
    pub factor: Option<Factor>,
    /// The method signed in with, on success.
    pub method: Option<SsoMethod>,
    /// RFC 8176 method references, on success.
    pub amr: Vec<String>,
    /// The app (`None`: the user's own page).
    pub app: Option<String>,
    /// `None` on success; the failure's code otherwise.
    pub failure: Option<&'static str>,
}

/// One user's sign-in state.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SignInView {
    /// When enrolment last completed.
    pub enrolled_at: Option<DateTime<Utc>>,
    /// Passkeys in registration order.
    pub passkeys: Vec<PasskeyView>,
    /// The authenticator app's sealed seed.
    #[serde(skip)]
    pub totp_seed: Option<SealedSecret>,
    /// When the authenticator app was set up.
    pub totp_enrolled_at: Option<DateTime<Utc>>,
    /// Newest first.
    pub recent: VecDeque<SignInRecord>,
    /// What sign-in decisions know (the same fold as `domain`'s): the link's state,
    /// lockouts, counters — so pages can ask the domain's rules without reading the log.
    #[serde(skip)]
    pub decided: SignInState,
}

/// Everyone's sign-in state and the lookups.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SignIns {
    #[serde(skip)]
    users: FxHashMap<UserId, SignInView>,
    /// Every enrolment link ever sent, by the hash of its secret: a replaced link still
    /// finds its user, so its page can say it was replaced.
    #[serde(skip)]
    links: FxHashMap<Hash, (UserId, LinkId)>,
    #[serde(skip)]
    credentials: FxHashMap<String, UserId>,
}

impl SignIns {
    /// A user's sign-in state.
    pub fn get(&self, user: UserId) -> Option<&SignInView> {
        self.users.get(&user)
    }

    /// The user and link of an enrolment link's secret hash.
    pub fn link(&self, token_hash: &Hash) -> Option<(UserId, LinkId)> {
        self.links.get(token_hash).copied()
    }

    /// The holder of a passkey.
    pub fn credential_holder(&self, credential_id: &str) -> Option<UserId> {
        self.credentials.get(credential_id).copied()
    }

    /// A passkey of a user.
    pub fn passkey(&self, user: UserId, credential_id: &str) -> Option<&PasskeyView> {
        self.users
            .get(&user)?
            .passkeys
            .iter()
            .find(|p| p.credential_id == credential_id)
    }

    pub(crate) fn apply(&mut self, user: UserId, env: &Envelope) {
        let at = env.recorded_at;
        if is_signin_event(&env.event) {
            idledger_domain::decide::signin::evolve(
                &mut self.users.entry(user).or_default().decided,
                &env.event,
            );
        }
        let record = |v: &mut SignInView, r: SignInRecord| {
            v.recent.push_front(r);
            v.recent.truncate(RECENT);
        };
        match &env.event {
            Event::InviteSent(e) => {
                if let Some(link) = &e.link {
                    self.links.insert(link.token_hash, (user, link.link_id));
                }
            }
            Event::EnrolmentCompleted(_) => {
                self.users.entry(user).or_default().enrolled_at = Some(at);
            }
            Event::PasskeyRegistered(e) => {
                // A credential id names one passkey of one user: the first holder keeps
                // it (registration refuses a held id; this keeps a race harmless).
                self.credentials
                    .entry(e.credential_id.clone())
                    .or_insert(user);
                self.users
                    .entry(user)
                    .or_default()
                    .passkeys
                    .push(PasskeyView {
                        credential_id: e.credential_id.clone(),
                        name: e.name.clone(),
                        algorithm: e.algorithm,
                        attachment: e.attachment,
                        sealed_public_key: e.sealed_public_key.clone(),
                        sign_count: e.sign_count,
                        registered_at: at,
                        last_used_at: None,
                    });
            }
            Event::PasskeyRenamed(e) => {
                if let Some(p) = self.passkey_mut(user, &e.credential_id) {
                    p.name = e.name.clone();
                }
            }
            Event::PasskeyRemoved(e) => {
                if self.credentials.get(&e.credential_id) == Some(&user) {
                    self.credentials.remove(&e.credential_id);
                }
                if let Some(v) = self.users.get_mut(&user) {
                    v.passkeys.retain(|p| p.credential_id != e.credential_id);
                }
            }
            Event::TotpEnrolled(e) => {
                let v = self.users.entry(user).or_default();
                v.totp_seed = Some(e.sealed_seed.clone());
                v.totp_enrolled_at = Some(at);
            }
            Event::TotpRemoved(_) => {
                if let Some(v) = self.users.get_mut(&user) {
                    v.totp_seed = None;
                    v.totp_enrolled_at = None;
                }
            }
            Event::SignInSucceeded(e) => {
                if let Some((id, count)) = &e.passkey {
                    if let Some(p) = self.passkey_mut(user, id) {
                        p.sign_count = *count;
                        p.last_used_at = Some(e.at);
                    }
                }
                let factor = if e.passkey.is_some() {
                    Factor::Passkey
                } else if e.totp_step.is_some() {
                    Factor::Totp
                } else {
                    Factor::Entra
                };
                record(
                    self.users.entry(user).or_default(),
                    SignInRecord {
                        at: e.at,
                        factor: Some(factor),
                        method: Some(e.method),
                        amr: e.amr.clone(),
                        app: e.app.clone(),
                        failure: None,
                    },
                );
            }
            Event::SignInFailed(SignInFailed {
                factor,
                reason,
                app,
                at,
            }) => record(
                self.users.entry(user).or_default(),
                SignInRecord {
                    at: *at,
                    factor: Some(*factor),
                    method: None,
                    amr: Vec::new(),
                    app: app.clone(),
                    failure: Some(reason.code()),
                },
            ),
            // The user's secrets are shredded; nothing of theirs signs anyone in again.
            Event::UserDeleted(_) => {
                if let Some(v) = self.users.remove(&user) {
                    for p in v.passkeys {
                        if self.credentials.get(&p.credential_id) == Some(&user) {
                            self.credentials.remove(&p.credential_id);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn passkey_mut(&mut self, user: UserId, credential_id: &str) -> Option<&mut PasskeyView> {
        self.users
            .get_mut(&user)?
            .passkeys
            .iter_mut()
            .find(|p| p.credential_id == credential_id)
    }
}

/// The events the sign-in fold reads (others would only create empty entries).
fn is_signin_event(e: &Event) -> bool {
    matches!(
        e,
        Event::InviteSent(_)
            | Event::EnrolmentStarted(_)
            | Event::EnrolmentCompleted(_)
            | Event::PasskeyRegistered(_)
            | Event::PasskeyRemoved(_)
            | Event::TotpEnrolled(_)
            | Event::TotpRemoved(_)
            | Event::SignInSucceeded(_)
            | Event::SignInFailed(_)
            | Event::SignInLocked(_)
            | Event::SignInUnlocked(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::events::{SignInLocked, SignInUnlocked};
    use idledger_domain::{Factor, StreamId};

    fn env(position: u64, user: UserId, event: Event) -> Envelope {
        crate::test_envelope(position, StreamId::user(user), event)
    }

    /// Pages judge locks from this fold (the Entra step is refused here): an admin's
    /// unlock must reach it, not only the stream's decisions.
    #[test]
    fn an_unlock_lifts_the_locks_the_pages_see() {
        let user = UserId(uuid::Uuid::from_u128(7));
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut s = SignIns::default();
        let locked = SignInLocked {
            factor: Factor::Entra,
            until: at + chrono::Duration::minutes(15),
        };
        s.apply(user, &env(1, user, locked.into()));
        let is_locked = |s: &SignIns| {
            s.get(user).is_some_and(|v| {
                idledger_domain::decide::signin::locked(&v.decided, Factor::Entra, at)
            })
        };
        assert!(is_locked(&s));
        let unlocked = SignInUnlocked {
            factors: vec![Factor::Entra],
        };
        s.apply(user, &env(2, user, unlocked.into()));
        assert!(!is_locked(&s));
    }
}
