//! The idledger binary's library: everything that does IO. Rooms, from the edge inwards
//! (arrows only point down this list; nothing imports `cli`):
//!
//! - [`cli`]: the command line (argument types, printing, benchmarks, the demo);
//! - [`client`]: a client of our own API and a `serve` child process (demo, benches, tests);
//! - [`server`]: start-up, configuration and shutdown of `serve`;
//! - [`http`]: the API and its typed requests and answers;
//! - [`audit`]: verification, replay, exports and proofs over stored records;
//! - [`sync`], [`rotation`]: the services that talk to Microsoft Graph;
//! - [`engine`]: the log, the projections and the keyring every service shares;
//! - [`notary`]: the log's signing key and its signed tree heads;
//! - [`graph`], [`invite`], [`password`]: Graph's client, the mailer, the password maker;
//! - [`projector`], [`store`], [`secrets`]: the live fold, the log, sealing and keys;
//! - [`error`]: the error start-up and commands report.
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
