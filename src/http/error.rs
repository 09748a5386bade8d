//! The one error type of the API, and extractors that turn every rejection of bad input
//! into it. Internal error text is logged, never sent.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use idledger_domain::decide::Rejection;
use serde::de::DeserializeOwned;

/// Every failure an API call can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such resource.
    #[error("{0} not found")]
    NotFound(String),
    /// Too many attempts: try later.
    #[error("{0}")]
    TooManyRequests(String),
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input that breaks a rule.
    #[error("{0}")]
    Unprocessable(String),
    /// The resource's state forbids it, or it changed meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// Body over the limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A bounded wait ran out (a route's timeout, or `min_position` not reached).
    #[error("{0}")]
    Timeout(String),
    /// Busy (a bounded resource is in use): retry after a few seconds.
    #[error("{0}")]
    Unavailable(String),
    /// A service we depend on (Graph, the mail relay) failed.
    #[error("{0}")]
    BadGateway(String),
    /// The route does not take the request's method.
    #[error("this route does not take this method: its Allow header lists those it does")]
    MethodNotAllowed,
    /// Something on our side failed; the details are in the log.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "upstream"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Unavailable(_) = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::NotFound(what) => ApiError::NotFound(what.to_owned()),
            Rejection::Throttled(m) => ApiError::TooManyRequests(m),
            Rejection::Invalid { .. } => ApiError::Unprocessable(r.to_string()),
            Rejection::AlreadyExists(_) | Rejection::DomainRemoved | Rejection::Conflict(_) => {
                ApiError::Conflict(r.to_string())
            }
        }
    }
}

impl From<crate::store::AppendError> for ApiError {
    fn from(e: crate::store::AppendError) -> Self {
        use crate::store::AppendError as A;
        match e {
            A::WrongExpectedVersion { .. } | A::EventIdConflict { .. } => {
                ApiError::Conflict("the resource changed meanwhile; retry".into())
            }
            A::Invalid(m) => ApiError::Unprocessable(m),
            A::WrongStream { .. } | A::Store(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::store::CommandError> for ApiError {
    fn from(e: crate::store::CommandError) -> Self {
        use crate::store::CommandError as C;
        match e {
            C::Rejected(r) => r.into(),
            C::Append(a) => a.into(),
            C::Store(s) => s.into(),
            C::Contended => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<crate::sync::SyncError> for ApiError {
    fn from(e: crate::sync::SyncError) -> Self {
        use crate::sync::SyncError as S;
        match e {
            S::Rejected(r) => r.into(),
            S::Tenant(m) => ApiError::Conflict(m),
            S::Append(a) => a.into(),
            S::Graph(g) => ApiError::BadGateway(g.to_string()),
            S::Cancelled | S::Contended(_) => ApiError::Conflict(e.to_string()),
            S::NotReached(n) => ApiError::Timeout(n.to_string()),
            S::Store(_) | S::Secrets(_) | S::Interrupted(_) | S::Panicked => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::secrets::SecretsError> for ApiError {
    fn from(e: crate::secrets::SecretsError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// A JSON object body whose rejections are [`ApiError`]s: 400 malformed or with two
/// `Content-Type`s, 413 too large, 415 not JSON, 422 not an object, wrong types, unknown
/// fields or bad enum values (naming the field).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Two types would let a proxy and this server read one body two ways.
        if req.headers().get_all(CONTENT_TYPE).iter().count() > 1 {
            return Err(ApiError::BadRequest("send one Content-Type".into()));
        }
        match Json::<UniqueKeys>::from_request(req, state).await {
            // Serde reads a struct from an array too, by position: the fields would then
            // go unnamed and unchecked against unknown ones.
            Ok(Json(UniqueKeys(v))) if v.is_object() => from_json(v).map(ApiJson),
            Ok(Json(_)) => Err(ApiError::Unprocessable("the body is a JSON object".into())),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "send Content-Type: application/json".into(),
            )),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge(super::BODY_LIMIT))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A JSON document in which no object names a key twice. Parsers disagree on which of two
/// equal keys counts (the first, the last): a proxy and this server would read one body
/// two ways, and `{"role":"agent","role":"admin"}` would be whatever each chose.
struct UniqueKeys(serde_json::Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(items.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if object.insert(key.clone(), value).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "{key}: named twice in one object"
                )));
            }
        }
        Ok(object.into())
    }
}

/// Deserializes part of a body, naming the failing field (422) as serde_path_to_error finds it.
pub fn from_json<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Unprocessable(format!("{path}: {}", e.into_inner()))
    })
}

/// Query parameters whose rejections are 400s naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// Path parameters whose rejections (text that is not UTF-8 once decoded) are 400s in the
/// JSON envelope.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// A path id that must be a UUID.
pub struct IdPath(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e: PathRejection| ApiError::BadRequest(e.body_text()))?;
        uuid::Uuid::parse_str(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::BadRequest(format!("id: {raw:?} is not a UUID")))
    }
}

/// Checks a free-text identifier or label from a request: `min` to `max` characters, no
/// control characters and no bidirectional-text overrides (which make a log line or a
/// table show something other than what is stored). 400 naming the field otherwise.
pub fn free_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(ApiError::BadRequest(format!(
            "{field}: {min} to {max} characters"
        )));
    }
    if !idledger_domain::decide::plain_text(value) {
        return Err(ApiError::BadRequest(format!(
            "{field}: no control or bidirectional-override characters"
        )));
    }
    Ok(())
}

/// The body of every error: `{"error":{"code","message"}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code (`unauthorized`, `forbidden`, `not_found`, `bad_request`, `invalid`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`, `timeout`, `busy`, `too_many_requests`,
    /// `upstream`, `internal`).
    pub code: String,
    /// What to do about it, in words.
    pub message: String,
}
