//! idledger's domain: identifiers, value types, the event catalogue, the envelope and its
//! stored record, and the pure decisions that turn commands into events.
//!
//! **Architecture invariant:** nothing here reads a clock, makes an id, draws a random
//! number or does IO. Time, ids, passwords and Graph answers come in as arguments.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod decide;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod recheck;
pub mod rotation;
pub mod samples;
pub mod sync;
pub mod totp;
pub mod types;

pub use envelope::{
    decode_record, encode_record, Envelope, ProposedEvent, RawRecord, RecordFields,
};
pub use events::Event;
pub use ids::*;
pub use types::*;
