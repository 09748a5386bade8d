//! The idledger binary's library: everything that does IO (store, projector, CLI).
//!
//! `main.rs` only dispatches to [`cli::run`]; integration tests use these modules directly.
#![forbid(unsafe_code)]

pub mod api_client;
pub mod bench;
pub mod bench_api;
pub mod bench_export;
pub mod bench_rotate;
pub mod bench_sync;
pub mod cli;
pub mod demo;
pub mod export;
pub mod graph;
pub mod http;
pub mod inspect;
pub mod invite;
pub mod keystore;
pub mod password;
pub mod progress;
pub mod projector;
pub mod rotation;
pub mod secrets;
pub mod server;
pub mod store;
pub mod sync;
