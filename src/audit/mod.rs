//! What auditors rely on, with no terminal and no HTTP: reading stored records from a data
//! dir, a server's feed or an open log ([`source`]); verifying and folding them
//! ([`chain`]); compliance exports, their manifests and their independent check
//! ([`export`], [`manifest`], [`files`]); checking a server's signed tree heads and
//! proofs ([`proofs`]). The CLI and the API both call these.

pub mod chain;
pub mod export;
pub mod files;
pub mod manifest;
pub mod proofs;
pub mod source;

pub use export::{
    export_file, parse_format, parse_kind, query_of, run_export, verify_export_file, HeadKey,
};
pub use files::{HashedWriter, RowSink};
pub use manifest::{Manifest, ManifestHead};
pub use source::{records_of, records_of_log, Records, Source, FEED_PAGE_RECORD_BYTES};
