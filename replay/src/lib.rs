//! idledger's replay: fold any iterator of envelopes up to a position or a time, and
//! verify the hash chain of any sequence of stored records, make or check compliance
//! exports, and check the Merkle tree's proofs and signed tree heads.
//!
//! Nothing here knows about sled or HTTP: the CLI feeds it from a data dir or from a
//! server's event feed, so an auditor can check a log without trusting whoever serves it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod export;
pub mod fold;
pub mod tree;
pub mod verify;

pub use export::{ExportFormat, ExportKind, ExportQuery, ExportSummary, Exporter};
pub use fold::{fold, fold_user, Prefix, Until};
pub use verify::{Problem, Verifier, VerifyReport};
