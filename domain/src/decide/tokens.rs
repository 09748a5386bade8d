//! Decisions on the `tokens` stream.

use super::*;
use std::collections::BTreeMap;

/// Tokens by id: live (`true`) or revoked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokensState {
    /// Every token ever issued.
    pub tokens: BTreeMap<TokenId, bool>,
}

/// Folds one event of the tokens stream.
pub fn evolve(mut s: TokensState, e: &Event) -> TokensState {
    match e {
        Event::TokenIssued(e) => {
            s.tokens.insert(e.token_id, true);
        }
        Event::TokenRevoked(e) => {
            s.tokens.insert(e.token_id, false);
        }
        _ => {}
    }
    s
}

/// A command on tokens.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenCommand {
    /// Issue a token whose secret hashes to `token_hash`.
    Issue(TokenIssued),
    /// Revoke a token.
    Revoke(TokenId),
}

/// Decides a command.
pub fn decide(s: &TokensState, c: TokenCommand) -> Result<Vec<Event>, Rejection> {
    match c {
        TokenCommand::Issue(t) => {
            if s.tokens.contains_key(&t.token_id) {
                return Err(Rejection::AlreadyExists("token"));
            }
            if t.name.chars().count() > 200 {
                return Err(invalid("name", "at most 200 characters"));
            }
            // The name is shown in lists, pages and logs: whatever issues the token (the
            // API, or `idledger token create` on the server's machine).
            if !super::plain_text(&t.name) {
                return Err(invalid(
                    "name",
                    "no control or bidirectional-override characters",
                ));
            }
            match (t.role, t.key_ids.is_empty()) {
                (Role::Agent, true) => {
                    return Err(invalid(
                        "key_ids",
                        "an agent token needs at least one key id",
                    ))
                }
                (Role::Admin | Role::Auditor, false) => {
                    return Err(invalid("key_ids", "only agent tokens are bound to keys"))
                }
                _ => {}
            }
            // Every poll of the agent's matches its keys against the writes owed.
            if t.key_ids.len() > MAX_KEYS_PER_AGENT {
                return Err(invalid(
                    "key_ids",
                    "at most 1000 keys per agent token: one workstation's keys",
                ));
            }
            if !t.key_ids.iter().all(|k| super::key_id_ok(&k.0)) {
                return Err(invalid(
                    "key_ids",
                    "each a key's serial: 1 to 128 printable ASCII characters, no spaces",
                ));
            }
            Ok(vec![t.into()])
        }
        TokenCommand::Revoke(id) => match s.tokens.get(&id) {
            None => Err(Rejection::NotFound("token")),
            Some(false) => Ok(vec![]),
            Some(true) => Ok(vec![TokenRevoked { token_id: id }.into()]),
        },
    }
}

/// The most keys one agent token serves.
pub const MAX_KEYS_PER_AGENT: usize = 1000;

#[cfg(test)]
mod tests {
    use super::super::spec::{given, TokensStream};
    use super::*;

    fn id() -> TokenId {
        TokenId(uuid::Uuid::from_u128(3))
    }

    fn issue(role: Role, keys: &[&str]) -> TokenCommand {
        TokenCommand::Issue(TokenIssued {
            token_id: id(),
            role,
            name: "t".into(),
            key_ids: keys.iter().map(|k| KeyId((*k).into())).collect(),
            token_hash: Hash([1; 32]),
        })
    }

    fn issued(role: Role) -> Event {
        let TokenCommand::Issue(t) = issue(role, &[]) else {
            unreachable!()
        };
        t.into()
    }

    #[test]
    fn a_name_with_control_or_override_characters_is_refused() {
        let none = given::<TokensStream>(&[]);
        for name in ["\u{1b}[31mroot", "ops\u{202e}nimda", "a\nb"] {
            let TokenCommand::Issue(mut t) = issue(Role::Admin, &[]) else {
                unreachable!()
            };
            t.name = name.into();
            none.when(TokenCommand::Issue(t)).then_invalid("name");
        }
    }

    #[test]
    fn agents_and_only_agents_hold_keys() {
        let none = given::<TokensStream>(&[]);
        none.when(issue(Role::Agent, &["K1"])).then_ok();
        none.when(issue(Role::Agent, &[])).then_invalid("key_ids");
        none.when(issue(Role::Admin, &["K1"]))
            .then_invalid("key_ids");
        let many: Vec<String> = (0..=MAX_KEYS_PER_AGENT).map(|n| format!("K{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        none.when(issue(Role::Agent, &many)).then_invalid("key_ids");
        none.when(issue(Role::Agent, &many[1..])).then_ok();
    }

    #[test]
    fn a_token_is_revoked_once_and_an_unknown_one_not_at_all() {
        given::<TokensStream>(&[issued(Role::Admin)])
            .when(TokenCommand::Revoke(id()))
            .then([TokenRevoked { token_id: id() }.into()]);
        let revoked =
            given::<TokensStream>(&[issued(Role::Admin), TokenRevoked { token_id: id() }.into()]);
        revoked.when(TokenCommand::Revoke(id())).then_nothing();
        revoked
            .when(TokenCommand::Revoke(TokenId(uuid::Uuid::nil())))
            .then_reject(Rejection::NotFound("token"));
    }
}
