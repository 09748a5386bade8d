//! The idledger binary's library: everything that does IO. Rooms, from the edge inwards
//! (arrows only point down this list; nothing but `main.rs` imports `cli`):
//!
//! - [`cli`]: the command line (argument types, printing, benchmarks, the demo);
//! - [`server`]: start-up, configuration and shutdown of `serve`;
//! - [`console`]: the admin console's pages, over the API;
//! - [`signin`]: users enrolling and signing in, and the OpenID Connect provider's routes;
//! - [`http`]: the API and its typed requests and answers;
//! - [`audit`], [`backup`]: verification, replay, exports and proofs; backups and restores;
//! - [`rotation`], [`sync`]: the services that talk to Microsoft Graph;
//! - [`provider`]: the OpenID Connect provider's signing keys;
//! - [`engine`]: the log, the projections and the keyring every service shares;
//! - [`notary`]: the log's signing key and its signed tree heads;
//! - [`invite`], [`password`], [`workstation`]: the mailer, the password maker, the
//!   workstation logon certificate;
//! - [`graph`]: the Microsoft Graph client;
//! - [`client`], [`error`]: a client of our own API and a `serve` child process (demo,
//!   benches, tests); the error start-up and commands report;
//! - [`projector`], [`store`], [`secrets`]: the live fold, the log, sealing and keys;
//! - [`metrics`], [`durable`], [`body`], [`json_fields`], [`crash`]: leaves that import no
//!   room (what is recorded for `/metrics`, files that survive power loss, bounded reads of
//!   answers, absent-or-null JSON fields, the crash tests' fault points).
#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
pub mod body;
pub mod cli;
pub mod client;
pub mod console;
pub mod crash;
pub mod durable;
pub mod engine;
pub mod error;
pub mod graph;
pub mod http;
pub mod invite;
pub mod json_fields;
pub mod metrics;
pub mod notary;
pub mod password;
pub mod projector;
pub mod provider;
pub mod rotation;
pub mod secrets;
pub mod server;
pub mod signin;
pub mod store;
pub mod sync;
pub mod workstation;
