//! `/v1/domains/{id}/workstation-certificate(s)`: each domain's workstation passwordless
//! logon certificate, downloadable as PEM or DER, replaceable by an admin (the old one
//! stays listed as retired). Its private key never leaves the engine.

use super::auth::Principal;
use super::error::{ApiError, ApiQuery, IdPath};
use super::{page, page_of, AppState, Page};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::decide::domain::{decide, evolve, DomainCommand};
use idledger_domain::events::WorkstationCertificateIssued;
use idledger_domain::{DomainId, StreamId};
use idledger_projections::WorkstationCertificateView;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A new certificate for the domain named `name`, its key sealed for `stream`.
pub fn issue_command(
    s: &AppState,
    stream: &StreamId,
    name: &str,
) -> Result<DomainCommand, ApiError> {
    let new = crate::workstation::generate(name, Utc::now())
        .map_err(|e| ApiError::Internal(format!("the certificate could not be made: {e}")))?;
    use base64::Engine;
    let key = crate::secrets::Secret::new(
        base64::engine::general_purpose::STANDARD.encode(&*new.private_key_der),
    );
    Ok(DomainCommand::IssueWorkstationCertificate(
        WorkstationCertificateIssued {
            certificate_id: new.fingerprint,
            certificate_der: new.der,
            sealed_private_key: s.engine.keyring.seal(stream, &key)?,
            not_before: new.not_before,
            not_after: new.not_after,
        },
    ))
}

/// A workstation logon certificate (never its key).
#[derive(Serialize, ToSchema)]
pub struct WorkstationCertificate {
    /// SHA-256 fingerprint of the DER (hex).
    id: String,
    status: CertificateStatus,
    /// Valid from.
    not_before: DateTime<Utc>,
    /// Valid until.
    not_after: DateTime<Utc>,
    /// When it was issued.
    issued_at: DateTime<Utc>,
    /// When a newer one replaced it.
    retired_at: Option<DateTime<Utc>>,
    /// The position of the record that issued it (replacements only).
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

/// Whether a certificate is the one in force.
#[derive(Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum CertificateStatus {
    /// In force: what workstations are configured with.
    Current,
    /// Replaced by a newer one (`retired_at`).
    Retired,
}

impl From<&WorkstationCertificateView> for WorkstationCertificate {
    fn from(c: &WorkstationCertificateView) -> Self {
        WorkstationCertificate {
            id: c.id.clone(),
            status: if c.retired_at.is_none() {
                CertificateStatus::Current
            } else {
                CertificateStatus::Retired
            },
            not_before: c.not_before,
            not_after: c.not_after,
            issued_at: c.issued_at,
            retired_at: c.retired_at,
            position: None,
        }
    }
}

/// `?format=pem|der`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FormatQuery {
    /// `pem` (default) or `der`.
    format: Option<CertificateFormat>,
}

/// How a certificate file is encoded.
#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum CertificateFormat {
    /// Base64 between `BEGIN CERTIFICATE` lines (`application/x-pem-file`, `.pem`).
    #[default]
    Pem,
    /// The DER bytes (`application/pkix-cert`, `.cer`).
    Der,
}

/// The certificate in force, as a file.
pub async fn download(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<FormatQuery>,
) -> Result<Response, ApiError> {
    let (name, der) = {
        let p = s.engine.projector.read();
        let d = p
            .domains
            .get(DomainId(id))
            .filter(|d| !d.removed)
            .ok_or_else(|| ApiError::NotFound("domain".into()))?;
        let c = d.workstation_certificate().ok_or_else(|| {
            ApiError::NotFound("workstation certificate (POST to this path issues one)".into())
        })?;
        (d.name.clone(), c.der.clone())
    };
    let file = name.replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
        "_",
    );
    let (kind, body, ext) = match q.format.unwrap_or_default() {
        CertificateFormat::Der => ("application/pkix-cert", der, "cer"),
        CertificateFormat::Pem => (
            "application/x-pem-file",
            crate::workstation::pem(&der).into_bytes(),
            "pem",
        ),
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}-workstation-logon.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// `?limit=&after=` of the certificates list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CertificatesQuery {
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// Every certificate the domain had, newest first.
pub async fn list(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<CertificatesQuery>,
) -> Result<Json<Page<WorkstationCertificate>>, ApiError> {
    let p = s.engine.projector.read();
    // As the download: a removed domain has no certificate in force to list.
    let d = p
        .domains
        .get(DomainId(id))
        .filter(|d| !d.removed)
        .ok_or_else(|| ApiError::NotFound("domain".into()))?;
    if let Some(a) = &q.after {
        if !d.workstation_certificates.iter().any(|c| c.id == *a) {
            return Err(ApiError::BadRequest(format!(
                "after: {a:?} is no certificate of this domain"
            )));
        }
    }
    let items = d
        .workstation_certificates
        .iter()
        .rev()
        .skip_while(|c| q.after.as_ref().is_some_and(|a| *a != c.id))
        .skip(usize::from(q.after.is_some()))
        .map(WorkstationCertificate::from);
    let (items, next) = page_of(items, q.limit, |c| c.id.clone())?;
    Ok(page(items, next))
}

/// Issues a new certificate; the one in force is retired in the same append.
pub async fn replace(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<WorkstationCertificate>), ApiError> {
    let domain = DomainId(id);
    let stream = StreamId::domain(domain);
    let name = {
        let p = s.engine.projector.read();
        p.domains
            .get(domain)
            .filter(|d| !d.removed)
            .map(|d| d.name.clone())
            .ok_or_else(|| ApiError::NotFound("domain".into()))?
    };
    let issue = issue_command(&s, &stream, &name)?;
    let DomainCommand::IssueWorkstationCertificate(issued) = &issue else {
        return Err(ApiError::Internal("not an issue command".into()));
    };
    let fingerprint = issued.certificate_id.clone();
    let position = s
        .command(&stream, &who.actor(), evolve, |st| {
            decide(st, issue.clone())
        })
        .await?;
    s.reach(Some(position)).await?;
    let p = s.engine.projector.read();
    let c = p
        .domains
        .get(domain)
        .and_then(|d| {
            d.workstation_certificates
                .iter()
                .find(|c| c.id == fingerprint)
        })
        .ok_or_else(|| ApiError::Internal("the new certificate is not in the projection".into()))?;
    let mut body = WorkstationCertificate::from(c);
    body.position = Some(position);
    Ok((StatusCode::CREATED, Json(body)))
}
