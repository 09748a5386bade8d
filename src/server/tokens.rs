//! API tokens issued outside a request: the bootstrap admin token at start-up and
//! `idledger token create` while the server is stopped. Only the token's hash is stored.

use crate::error::Error;
use crate::http::{new_token_text, token_hash};
use crate::store::{decide_and_append, EventLog};
use idledger_domain::decide::tokens::{decide, evolve, TokenCommand};
use idledger_domain::events::TokenIssued;
use idledger_domain::{Actor, KeyId, Role, StreamId, TokenId};

/// Issues a token through the command path; returns its id, its text (shown once) and
/// the position of `TokenIssued`.
pub async fn issue_token(
    log: &dyn EventLog,
    actor: Actor,
    role: Role,
    name: String,
    key_ids: Vec<KeyId>,
) -> Result<(TokenId, String, u64), Error> {
    let text = new_token_text();
    let token_id = TokenId(uuid::Uuid::now_v7());
    let issued = TokenIssued {
        token_id,
        role,
        name,
        key_ids,
        token_hash: token_hash(&text),
    };
    let position = decide_and_append(log, &StreamId::tokens(), &actor, None, evolve, |st| {
        decide(st, TokenCommand::Issue(issued.clone()))
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?;
    Ok((token_id, text, position))
}
