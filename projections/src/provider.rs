//! The OpenID Connect provider's apps and signing keys, as its endpoints read them.

use chrono::{DateTime, Utc};
use idledger_domain::{AppId, ClientType, DomainId, Envelope, Event, Hash, SealedSecret};
use rustc_hash::FxHashMap;
use serde::Serialize;

/// A registered app.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppView {
    /// The app.
    pub id: AppId,
    /// Its `client_id`.
    pub client_id: String,
    /// Its name.
    pub name: String,
    /// Redirect URIs (exact match).
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs (exact match).
    pub post_logout_redirect_uris: Vec<String>,
    /// Confidential or public.
    pub client_type: ClientType,
    /// Users of these domains may sign in.
    pub domain_ids: Vec<DomainId>,
    /// `ES256` or `RS256`.
    pub id_token_alg: String,
    /// SHA-256 of the client secret.
    #[serde(skip)]
    pub secret_hash: Option<Hash>,
    /// Removed.
    pub removed: bool,
    /// Registered.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A signing key of the provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SigningKeyView {
    /// Its `kid`.
    pub kid: String,
    /// `ES256` or `RS256`.
    pub alg: String,
    /// The public JWK (JSON text).
    pub public_jwk: String,
    /// The private key, sealed.
    #[serde(skip)]
    pub sealed_private_key: SealedSecret,
    /// Added (and published from then).
    pub added_at: DateTime<Utc>,
    /// It signs from then: when it was added, or a handover later.
    pub signs_from: DateTime<Utc>,
    /// It signs no more from then (retired at once, or handing over later).
    pub signs_until: Option<DateTime<Utc>>,
    /// Retired: published until then.
    pub verify_until: Option<DateTime<Utc>>,
}

impl SigningKeyView {
    /// `next` (published, not signing yet), `current` (may sign) or `retired`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.signs_until.is_some_and(|u| u <= now) {
            "retired"
        } else if now < self.signs_from {
            "next"
        } else {
            "current"
        }
    }
}

/// Apps and keys.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Provider {
    apps: FxHashMap<AppId, AppView>,
    #[serde(skip)]
    by_client: FxHashMap<String, AppId>,
    /// In the order they were added.
    pub keys: Vec<SigningKeyView>,
}

impl Provider {
    /// An app by id.
    pub fn app(&self, id: AppId) -> Option<&AppView> {
        self.apps.get(&id)
    }

    /// A live app by `client_id`.
    pub fn by_client_id(&self, client_id: &str) -> Option<&AppView> {
        self.by_client
            .get(client_id)
            .and_then(|id| self.apps.get(id))
            .filter(|a| !a.removed)
    }

    /// Every app, removed ones too, oldest first.
    pub fn apps(&self) -> Vec<&AppView> {
        let mut all: Vec<&AppView> = self.apps.values().collect();
        all.sort_by_key(|a| (a.created_at, a.id));
        all
    }

    /// The key that signs with `alg` at `now`: of those whose signing time holds `now`,
    /// the one that began last (a key put in force at once ends its predecessor's time
    /// then; a handover, at its moment).
    pub fn signing_key(&self, alg: &str, now: DateTime<Utc>) -> Option<&SigningKeyView> {
        self.keys
            .iter()
            .filter(|k| {
                k.alg == alg && k.signs_from <= now && k.signs_until.is_none_or(|u| now < u)
            })
            .max_by_key(|k| k.signs_from)
    }

    /// The algorithms whose newest key (a staged one too) will have signed for `max_age`
    /// within `ahead` of `now`: the schedule stages their successors, `ahead` before they
    /// take over.
    pub fn keys_due(
        &self,
        now: DateTime<Utc>,
        max_age: chrono::Duration,
        ahead: chrono::Duration,
    ) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| k.signs_until.is_none() && now + ahead - k.signs_from >= max_age)
            .map(|k| k.alg.clone())
            .collect()
    }

    /// Keys a verifier needs at `now`: the one in force and retired ones still in overlap.
    pub fn published_keys(&self, now: DateTime<Utc>) -> impl Iterator<Item = &SigningKeyView> {
        self.keys
            .iter()
            .filter(move |k| k.verify_until.is_none_or(|u| now < u))
    }

    pub(crate) fn apply(&mut self, env: &Envelope) {
        let at = env.recorded_at;
        match &env.event {
            Event::AppRegistered(e) => {
                self.by_client.insert(e.client_id.clone(), e.app_id);
                self.apps.insert(
                    e.app_id,
                    AppView {
                        id: e.app_id,
                        client_id: e.client_id.clone(),
                        name: e.name.clone(),
                        redirect_uris: e.redirect_uris.clone(),
                        post_logout_redirect_uris: e.post_logout_redirect_uris.clone(),
                        client_type: e.client_type,
                        domain_ids: e.domain_ids.clone(),
                        id_token_alg: e.id_token_alg.clone(),
                        secret_hash: e.secret_hash,
                        removed: false,
                        created_at: at,
                        updated_at: at,
                    },
                );
            }
            Event::AppChanged(e) => {
                if let Some(a) = self.apps.get_mut(&e.app_id) {
                    a.name.clone_from(&e.name);
                    a.redirect_uris.clone_from(&e.redirect_uris);
                    a.post_logout_redirect_uris
                        .clone_from(&e.post_logout_redirect_uris);
                    a.domain_ids.clone_from(&e.domain_ids);
                    if let Some(alg) = &e.id_token_alg {
                        a.id_token_alg.clone_from(alg);
                    }
                    a.updated_at = at;
                }
            }
            Event::AppSecretRotated(e) => {
                if let Some(a) = self.apps.get_mut(&e.app_id) {
                    a.secret_hash = Some(e.secret_hash);
                    a.updated_at = at;
                }
            }
            Event::AppRemoved(e) => {
                if let Some(a) = self.apps.get_mut(&e.app_id) {
                    a.removed = true;
                    a.updated_at = at;
                }
            }
            Event::SigningKeyAdded(e) => self.keys.push(SigningKeyView {
                kid: e.kid.clone(),
                alg: e.alg.clone(),
                public_jwk: e.public_jwk.clone(),
                sealed_private_key: e.sealed_private_key.clone(),
                added_at: at,
                signs_from: at,
                signs_until: None,
                verify_until: None,
            }),
            // A key retired twice (at a handover, then at once) keeps the earlier ends.
            Event::SigningKeyRetired(e) => {
                if let Some(k) = self.keys.iter_mut().find(|k| k.kid == e.kid) {
                    k.verify_until = Some(
                        k.verify_until
                            .map_or(e.verify_until, |u| u.min(e.verify_until)),
                    );
                    k.signs_until = Some(k.signs_until.map_or(at, |u| u.min(at)));
                }
            }
            // After the key's addition and its predecessor's retirement, in one append.
            Event::SigningKeyHandover(e) => {
                for k in &mut self.keys {
                    if k.kid == e.to {
                        k.signs_from = e.at;
                    } else if e.from.as_ref() == Some(&k.kid) {
                        k.signs_until = Some(e.at);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::events::{SigningKeyAdded, SigningKeyHandover, SigningKeyRetired};
    use idledger_domain::{DataKeyId, StreamId};

    fn env(position: u64, event: Event) -> Envelope {
        crate::test_envelope(position, StreamId::provider(), event)
    }

    #[test]
    fn a_retired_key_is_published_until_its_overlap_ends_and_signs_no_more() {
        let mut p = Provider::default();
        let key = |kid: &str| SigningKeyAdded {
            kid: kid.into(),
            alg: "ES256".into(),
            public_jwk: "{}".into(),
            sealed_private_key: SealedSecret {
                key_id: DataKeyId(uuid::Uuid::from_u128(1)),
                nonce: [0; 24],
                ciphertext: vec![],
            },
        };
        let until = DateTime::from_timestamp(1_800_001_000, 0).unwrap_or_default();
        p.apply(&env(1, key("k1").into()));
        p.apply(&env(
            2,
            SigningKeyRetired {
                kid: "k1".into(),
                verify_until: until,
            }
            .into(),
        ));
        p.apply(&env(3, key("k2").into()));
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let signing = |p: &Provider, at| p.signing_key("ES256", at).map(|k| k.kid.clone());
        assert_eq!(signing(&p, now).as_deref(), Some("k2"));
        assert!(p.signing_key("RS256", now).is_none());
        let kids = |p: &Provider, now| {
            p.published_keys(now)
                .map(|k| k.kid.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(&p, until - chrono::Duration::seconds(1)), ["k1", "k2"]);
        assert_eq!(kids(&p, until), ["k2"]);
        // k2 was added at the envelopes' time: due once it is a day old, not before.
        let added = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let day = chrono::Duration::days(1);
        let none = chrono::Duration::zero();
        assert!(p
            .keys_due(added + day - chrono::Duration::seconds(1), day, none)
            .is_empty());
        assert_eq!(p.keys_due(added + day, day, none), ["ES256"]);
        // Staged an hour ahead: due an hour early, and the new key then signs only from
        // the handover, while both are published.
        let hour = chrono::Duration::hours(1);
        assert_eq!(p.keys_due(added + day - hour, day, hour), ["ES256"]);
        let handover = added + day;
        let verify_until = handover + hour;
        p.apply(&env(
            4,
            SigningKeyRetired {
                kid: "k2".into(),
                verify_until,
            }
            .into(),
        ));
        p.apply(&env(5, key("k3").into()));
        p.apply(&env(
            6,
            SigningKeyHandover {
                from: Some("k2".into()),
                to: "k3".into(),
                at: handover,
            }
            .into(),
        ));
        let before = handover - chrono::Duration::seconds(1);
        assert_eq!(signing(&p, before).as_deref(), Some("k2"));
        assert_eq!(signing(&p, handover).as_deref(), Some("k3"));
        assert_eq!(kids(&p, before), ["k2", "k3"]);
        assert_eq!(kids(&p, verify_until), ["k3"]);
        let status = |p: &Provider, kid: &str, at| {
            p.keys.iter().find(|k| k.kid == kid).map(|k| k.status(at))
        };
        let both = |at| (status(&p, "k2", at), status(&p, "k3", at));
        assert_eq!(both(before), (Some("current"), Some("next")));
        assert_eq!(both(handover), (Some("retired"), Some("current")));
        // Its successor is not due again before it has signed its own time.
        assert!(p.keys_due(handover, day, hour).is_empty());
        // Put in force at once before the handover (a compromise): the staged key never
        // signs, though its moment comes.
        p.apply(&env(
            7,
            SigningKeyRetired {
                kid: "k3".into(),
                verify_until,
            }
            .into(),
        ));
        p.apply(&env(8, key("k4").into()));
        assert_eq!(signing(&p, now).as_deref(), Some("k4"));
        assert_eq!(signing(&p, handover).as_deref(), Some("k4"));
        assert_eq!(status(&p, "k3", now), Some("retired"));
    }
}
