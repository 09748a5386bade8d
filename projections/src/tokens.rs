//! API tokens, by id and by the hash of their secret.

use chrono::{DateTime, Utc};
use idledger_domain::{Envelope, Event, Hash, KeyId, Role, TokenId};
use rustc_hash::FxHashMap;
use serde::Serialize;

/// One token (never its secret).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenView {
    /// The token.
    pub id: TokenId,
    /// What the token may do.
    pub role: Role,
    /// Its label.
    pub name: String,
    /// For agents, the keys it serves.
    pub key_ids: Vec<KeyId>,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// Revoked, if so.
    pub revoked_at: Option<DateTime<Utc>>,
    /// SHA-256 of the secret.
    #[serde(skip)]
    pub token_hash: Hash,
}

/// All tokens.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tokens {
    #[serde(serialize_with = "crate::users::sorted_values")]
    by_id: FxHashMap<TokenId, TokenView>,
    #[serde(skip)]
    by_hash: FxHashMap<Hash, TokenId>,
}

impl Tokens {
    /// The live token whose secret hashes to `hash`.
    pub fn by_hash(&self, hash: &Hash) -> Option<&TokenView> {
        let t = self.by_id.get(self.by_hash.get(hash)?)?;
        t.revoked_at.is_none().then_some(t)
    }

    /// A token by id.
    pub fn get(&self, id: TokenId) -> Option<&TokenView> {
        self.by_id.get(&id)
    }

    /// All tokens, oldest first.
    pub fn all(&self) -> Vec<&TokenView> {
        let mut v: Vec<_> = self.by_id.values().collect();
        v.sort_by_key(|t| (t.issued_at, t.id));
        v
    }

    /// True when no token is live (the server then issues a bootstrap admin token).
    pub fn none_live(&self) -> bool {
        self.by_id.values().all(|t| t.revoked_at.is_some())
    }

    pub(crate) fn apply(&mut self, env: &Envelope) {
        match &env.event {
            Event::TokenIssued(e) => {
                self.by_hash.insert(e.token_hash, e.token_id);
                self.by_id.insert(
                    e.token_id,
                    TokenView {
                        id: e.token_id,
                        role: e.role,
                        name: e.name.clone(),
                        key_ids: e.key_ids.clone(),
                        issued_at: env.recorded_at,
                        revoked_at: None,
                        token_hash: e.token_hash,
                    },
                );
            }
            Event::TokenRevoked(e) => {
                if let Some(t) = self.by_id.get_mut(&e.token_id) {
                    t.revoked_at.get_or_insert(env.recorded_at);
                    self.by_hash.remove(&t.token_hash);
                }
            }
            _ => {}
        }
    }
}
