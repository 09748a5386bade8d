//! `/v1/tokens`: API tokens (admin). A token's text is shown once, at creation.

use super::auth::{new_token_text, token_hash, Principal};
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::{page, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use idledger_domain::decide::tokens::{decide, evolve, TokenCommand};
use idledger_domain::events::TokenIssued;
use idledger_domain::{KeyId, Role, StreamId, TokenId};
use serde::Deserialize;
use serde_json::json;

/// `POST /v1/tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    role: Role,
    #[serde(default)]
    name: String,
    #[serde(default)]
    key_ids: Vec<String>,
}

/// Issues a token; answers `{"id","token","position"}` once.
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    super::error::free_text("name", &body.name, 0, 200)?;
    for k in &body.key_ids {
        super::error::free_text("key_ids", k, 0, 128)?;
    }
    let text = new_token_text();
    let token_id = TokenId(uuid::Uuid::now_v7());
    let issued = TokenIssued {
        token_id,
        role: body.role,
        name: body.name,
        key_ids: body.key_ids.into_iter().map(KeyId).collect(),
        token_hash: token_hash(&text),
    };
    let position = s
        .command(&StreamId::tokens(), &who.actor(), evolve, |st| {
            decide(st, TokenCommand::Issue(issued.clone()))
        })
        .await?;
    // The token works as soon as its creator has it.
    s.reach(Some(position)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": token_id, "token": text, "position": position})),
    ))
}

/// `GET /v1/tokens` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensQuery {
    limit: Option<usize>,
    after: Option<uuid::Uuid>,
    min_position: Option<u64>,
}

/// Lists tokens (never their text or hash) in id order, paged.
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<TokensQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    s.reach(q.min_position).await?;
    let p = s.projector.read();
    let mut all = p.tokens.all();
    all.sort_by_key(|t| t.id);
    let tokens = all
        .into_iter()
        .filter(|t| q.after.is_none_or(|a| t.id.0 > a));
    let (items, next) = super::page_of(tokens, q.limit, |t| t.id)?;
    Ok(page(items.into_iter().cloned().collect(), next))
}

/// Revokes a token.
pub async fn revoke(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    let position = s
        .command(&StreamId::tokens(), &who.actor(), evolve, |st| {
            decide(st, TokenCommand::Revoke(TokenId(id)))
        })
        .await?;
    // Revoked means refused from the next request on.
    s.reach(Some(position)).await?;
    Ok(Json(
        json!({"id": id, "revoked": true, "position": position}),
    ))
}
