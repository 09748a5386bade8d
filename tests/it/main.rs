//! End-to-end tests of the idledger binary and its event log. One test binary, modules
//! by area (see the Tests section of ARCHITECTURE.md).

mod api;
mod architecture;
mod audit;
mod backup;
mod campaign;
mod cli;
mod console;
mod crash;
mod graph;
mod listen;
mod log;
mod metrics;
mod oidc;
mod openapi;
mod proofs;
mod rotation;
mod signin;
mod support;
mod sync;
mod tls;
