//! The envelope around every event, and the stored record: format byte, hash chain, bytes.
//!
//! Record layout (format 1):
//!
//! ```text
//! [0]      format byte (1)
//! [1..33]  prev_hash
//! [33..65] hash = SHA-256(prev_hash ‖ body)
//! [65..]   body = bincode(header) ‖ bincode(payload)
//! ```
//!
//! The header holds every envelope field but the hashes; the payload is the event struct of
//! the header's kind and schema. Hashing the body as stored means verification needs no
//! re-encoding, so a verifier built years later checks the very bytes that were written.

use crate::codec::{decode_borrowed_prefix, encode_into, CodecError};
use crate::events::Event;
use crate::ids::{InvalidStreamName, StreamId};
use crate::types::{Actor, Hash};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The record format this build writes.
pub const RECORD_FORMAT: u8 = 1;
/// Bytes before the body: format byte and two hashes.
pub const RECORD_PREFIX_LEN: usize = 1 + 32 + 32;

/// An event as the log holds it, with everything the log assigned.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    /// Global position, contiguous from 1.
    pub position: u64,
    /// The stream the event belongs to.
    pub stream: StreamId,
    /// The event's version in its stream, contiguous from 1.
    pub version: u64,
    /// Unique id; appending the same id again is idempotent.
    pub event_id: Uuid,
    /// When the log committed it (UTC, microsecond precision).
    pub recorded_at: DateTime<Utc>,
    /// Who caused it.
    pub actor: Actor,
    /// Ties the events of one sync run or rotation together.
    pub correlation_id: Option<Uuid>,
    /// The event or command that caused this one.
    pub causation_id: Option<Uuid>,
    /// The event itself.
    pub event: Event,
    /// Hash of the previous record (zero for position 1).
    pub prev_hash: Hash,
    /// This record's hash.
    pub hash: Hash,
}

/// An event proposed for appending: the fields the caller chooses.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ProposedEvent {
    /// Unique id (UUID v7 by convention); the idempotency key.
    pub event_id: Uuid,
    /// Who causes it.
    pub actor: Actor,
    /// Ties the events of one sync run or one rotation together.
    pub correlation_id: Option<Uuid>,
    /// The event or request that caused this one.
    pub causation_id: Option<Uuid>,
    /// What happened.
    pub event: Event,
}

impl ProposedEvent {
    /// A proposal with no correlation.
    pub fn new(event_id: Uuid, actor: Actor, event: impl Into<Event>) -> Self {
        ProposedEvent {
            event_id,
            actor,
            correlation_id: None,
            causation_id: None,
            event: event.into(),
        }
    }

    /// Sets the correlation id.
    pub fn correlated(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    position: u64,
    stream: &'a str,
    version: u64,
    event_id: Uuid,
    recorded_at_us: i64,
    actor: &'a Actor,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    kind: &'a str,
    schema: u16,
}

#[derive(Deserialize)]
struct HeaderIn<'a> {
    position: u64,
    #[serde(borrow)]
    stream: &'a str,
    version: u64,
    event_id: Uuid,
    recorded_at_us: i64,
    actor: Actor,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    kind: &'a str,
    schema: u16,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than the fixed prefix.
    #[error("record is {0} bytes, shorter than its prefix")]
    Truncated(usize),
    /// A format byte this build does not know.
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The header or payload did not decode.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The stored time is out of range.
    #[error("recorded_at out of range")]
    BadTime,
    /// The stream name is invalid.
    #[error("{0}")]
    BadStream(#[from] InvalidStreamName),
}

/// A stored record split into its parts, without decoding the body.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    /// The hash this record says came before it.
    pub prev_hash: Hash,
    /// The hash this record claims.
    pub hash: Hash,
    /// The hashed body.
    pub body: &'a [u8],
}

impl<'a> RawRecord<'a> {
    /// Splits a record; checks the format byte and length only.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RecordError> {
        if bytes.len() < RECORD_PREFIX_LEN {
            return Err(RecordError::Truncated(bytes.len()));
        }
        if bytes[0] != RECORD_FORMAT {
            return Err(RecordError::UnknownFormat(bytes[0]));
        }
        let mut prev = [0u8; 32];
        let mut hash = [0u8; 32];
        prev.copy_from_slice(&bytes[1..33]);
        hash.copy_from_slice(&bytes[33..65]);
        Ok(RawRecord {
            prev_hash: Hash(prev),
            hash: Hash(hash),
            body: &bytes[RECORD_PREFIX_LEN..],
        })
    }

    /// Recomputes the hash of this record from its prev_hash and body.
    pub fn computed_hash(&self) -> Hash {
        chain_hash(&self.prev_hash, self.body)
    }

    /// Decodes only the header: what indexes need, without the payload.
    pub fn decode_header(&self) -> Result<RecordHeader, RecordError> {
        let (h, _): (HeaderIn<'_>, usize) = decode_borrowed_prefix(self.body)?;
        Ok(RecordHeader {
            position: h.position,
            stream: StreamId::new(h.stream)?,
            version: h.version,
            event_id: h.event_id,
            recorded_at_us: h.recorded_at_us,
        })
    }

    /// Decodes the body into an envelope.
    pub fn decode(&self) -> Result<Envelope, RecordError> {
        let (h, n): (HeaderIn<'_>, usize) = decode_borrowed_prefix(self.body)?;
        let event = Event::decode_payload(h.kind, h.schema, &self.body[n..])?;
        let recorded_at =
            DateTime::<Utc>::from_timestamp_micros(h.recorded_at_us).ok_or(RecordError::BadTime)?;
        Ok(Envelope {
            position: h.position,
            stream: StreamId::new(h.stream)?,
            version: h.version,
            event_id: h.event_id,
            recorded_at,
            actor: h.actor,
            correlation_id: h.correlation_id,
            causation_id: h.causation_id,
            event,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// The index fields of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Global position, from 1, assigned by the log.
    pub position: u64,
    /// The stream it belongs to (`domain-{id}`, `user-{id}`, `tokens`).
    pub stream: StreamId,
    /// Version in the stream.
    pub version: u64,
    /// Unique id: the idempotency key.
    pub event_id: Uuid,
    /// Commit time in microseconds since the Unix epoch.
    pub recorded_at_us: i64,
}

/// `SHA-256(prev_hash ‖ body)`: the chain link.
pub fn chain_hash(prev_hash: &Hash, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev_hash.0);
    h.update(body);
    Hash(h.finalize().into())
}

/// Decodes a stored record (does not check its hash; see [`RawRecord::computed_hash`]).
pub fn decode_record(bytes: &[u8]) -> Result<Envelope, RecordError> {
    RawRecord::parse(bytes)?.decode()
}

/// The fields of a record before it is hashed.
#[derive(Clone, Copy, Debug)]
pub struct RecordFields<'a> {
    /// Position assigned by the log.
    pub position: u64,
    /// The stream it belongs to (`domain-{id}`, `user-{id}`, `tokens`).
    pub stream: &'a StreamId,
    /// Version assigned by the log.
    pub version: u64,
    /// Commit time.
    pub recorded_at: DateTime<Utc>,
    /// What the caller proposed (id, actor, correlation, event).
    pub proposed: &'a ProposedEvent,
}

/// Encodes a record chained to `prev_hash`; returns the bytes and the record's hash.
///
/// `recorded_at` is stored in whole microseconds.
pub fn encode_record(
    fields: RecordFields<'_>,
    prev_hash: &Hash,
) -> Result<(Vec<u8>, Hash), CodecError> {
    let mut out = Vec::with_capacity(256);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&prev_hash.0);
    out.extend_from_slice(&[0u8; 32]);
    let p = fields.proposed;
    let header = HeaderOut {
        position: fields.position,
        stream: fields.stream.as_str(),
        version: fields.version,
        event_id: p.event_id,
        recorded_at_us: fields.recorded_at.timestamp_micros(),
        actor: &p.actor,
        correlation_id: p.correlation_id,
        causation_id: p.causation_id,
        kind: p.event.kind(),
        schema: p.event.schema(),
    };
    encode_into(&header, &mut out)?;
    p.event.encode_payload(&mut out)?;
    let hash = chain_hash(prev_hash, &out[RECORD_PREFIX_LEN..]);
    out[33..65].copy_from_slice(&hash.0);
    Ok((out, hash))
}

impl Envelope {
    /// The event kind's name.
    pub fn kind(&self) -> &'static str {
        self.event.kind()
    }

    /// The event's schema version.
    pub fn schema(&self) -> u16 {
        self.event.schema()
    }

    /// The JSON view used by `idledger log` and the event feed (see [`EnvelopeView`]).
    pub fn view(&self) -> EnvelopeView {
        EnvelopeView {
            actor: self.actor.to_string(),
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            event_id: self.event_id,
            hash: self.hash.to_hex(),
            kind: self.kind(),
            payload: self.event.payload_json(),
            position: self.position,
            prev_hash: self.prev_hash.to_hex(),
            recorded_at: self
                .recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            schema: self.schema(),
            stream: self.stream.as_str().to_owned(),
            version: self.version,
        }
    }

    /// [`Envelope::view`] as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or(serde_json::Value::Null)
    }
}

/// An envelope as people and feeds read it (`idledger log`, `/v1/events`, the event
/// stream): field names follow ENGINE.md §2, hashes are hex, sealed secrets show as
/// `"sealed"`.
///
/// The fields are in alphabetical order: the view was first written as a JSON map, whose
/// keys serialize sorted, and logs already written and compared hold that order.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvelopeView {
    /// Who caused it (`system`, `sync:<domain>`, `admin:<token>` …).
    pub actor: String,
    /// The event or command that caused this one.
    pub causation_id: Option<Uuid>,
    /// Ties the events of one sync run or rotation together.
    pub correlation_id: Option<Uuid>,
    /// Unique id: the idempotency key.
    pub event_id: Uuid,
    /// This record's hash (hex).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub hash: String,
    /// The event kind (`UserImported` …).
    pub kind: &'static str,
    /// The event's fields, as its kind and schema version define them.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    /// Global position, from 1.
    pub position: u64,
    /// Hash of the previous record (hex; zeros before position 1).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub prev_hash: String,
    /// Commit time, RFC 3339 in UTC with microseconds.
    #[cfg_attr(feature = "openapi", schema(value_type = DateTime<Utc>))]
    pub recorded_at: String,
    /// The payload's schema version.
    pub schema: u16,
    /// The stream (`domain-{id}`, `user-{id}`, `tokens` …).
    pub stream: String,
    /// Version in the stream, from 1.
    pub version: u64,
}
