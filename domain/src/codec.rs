//! The binary codec: bincode 2 (serde), standard configuration, with a size limit so that a
//! damaged record can never make a decoder allocate without bound.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest encoded value the decoder accepts (a record is far smaller).
pub const DECODE_LIMIT: usize = 16 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// bincode could not encode the value.
    #[error("encode failed: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding.
    #[error("decode failed: {0}")]
    Decode(String),
    /// Bytes were left over after the value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// No event of this kind and schema is known.
    #[error("unknown event kind {kind:?} schema {schema}")]
    UnknownKind {
        /// The kind name read.
        kind: String,
        /// The schema read.
        schema: u16,
    },
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value from the front of `bytes`, returning it and the bytes consumed.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    // The borrowing decoder hands byte strings (UUIDs, hashes) to serde as slices; the
    // owned one allocates a Vec for each, which dominated replay time.
    bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes a value that may borrow strings from `bytes`; returns it and the bytes consumed.
pub fn decode_borrowed_prefix<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, n) = decode_prefix(bytes)?;
    if n != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - n));
    }
    Ok(v)
}
