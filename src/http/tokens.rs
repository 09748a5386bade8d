//! `/v1/tokens`: API tokens (admin). A token's text is shown once, at creation.

use super::auth::{new_token_text, token_hash, Principal};
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::{page, AppState, Page};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::decide::tokens::{decide, evolve, TokenCommand};
use idledger_domain::events::TokenIssued;
use idledger_domain::{KeyId, Role, StreamId, TokenId};
use idledger_projections::TokenView;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/tokens` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// `admin`, `auditor` or `agent`.
    role: Role,
    /// A label (at most 200 characters).
    #[serde(default)]
    name: String,
    /// For agents: the hardware keys it serves (at least one).
    #[serde(default)]
    key_ids: Vec<String>,
}

/// A token just issued: its text, shown this once.
#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    /// The token's id.
    id: uuid::Uuid,
    /// The bearer text.
    token: String,
    /// Position of `TokenIssued`.
    position: u64,
}

/// Issues a token; answers `{"id","token","position"}` once.
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
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
        Json(TokenCreated {
            id: token_id.0,
            token: text,
            position,
        }),
    ))
}

/// A token as listed: never its text or hash.
#[derive(Serialize, ToSchema)]
pub struct Token {
    /// The token's id.
    id: uuid::Uuid,
    /// What the token may do.
    role: Role,
    /// Its label.
    name: String,
    /// For agents, the keys it serves.
    #[schema(value_type = Vec<String>)]
    key_ids: Vec<KeyId>,
    /// When it was issued.
    issued_at: DateTime<Utc>,
    /// Revoked, if so.
    revoked_at: Option<DateTime<Utc>>,
}

impl From<&TokenView> for Token {
    fn from(t: &TokenView) -> Self {
        Token {
            id: t.id.0,
            role: t.role,
            name: t.name.clone(),
            key_ids: t.key_ids.clone(),
            issued_at: t.issued_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// `GET /v1/tokens` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokensQuery {
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
    /// The `next` of the page before.
    after: Option<uuid::Uuid>,
    /// Wait (briefly) until the projections include this position.
    min_position: Option<u64>,
}

/// Lists tokens (never their text or hash) in id order, paged.
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<TokensQuery>,
) -> Result<Json<Page<Token>>, ApiError> {
    s.reach(q.min_position).await?;
    let p = s.engine.projector.read();
    let mut all = p.tokens.all();
    all.sort_by_key(|t| t.id);
    let tokens = all
        .into_iter()
        .filter(|t| q.after.is_none_or(|a| t.id.0 > a));
    let (items, next) = super::page_of(tokens, q.limit, |t| t.id)?;
    Ok(page(items.into_iter().map(Token::from).collect(), next))
}

/// A token revoked.
#[derive(Serialize, ToSchema)]
pub struct TokenRevoked {
    /// The token's id.
    id: uuid::Uuid,
    /// Always true.
    revoked: bool,
    /// Position of `TokenRevoked` (the log's head when it was revoked already).
    position: u64,
}

/// Revokes a token.
pub async fn revoke(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<TokenRevoked>, ApiError> {
    let position = s
        .command(&StreamId::tokens(), &who.actor(), evolve, |st| {
            decide(st, TokenCommand::Revoke(TokenId(id)))
        })
        .await?;
    // Revoked means refused from the next request on.
    s.reach(Some(position)).await?;
    Ok(Json(TokenRevoked {
        id,
        revoked: true,
        position,
    }))
}
