//! What every pushmesh service shares: the generated gRPC code, the id and
//! name types that are validated once at the edge, and the operational
//! plumbing (telemetry, the admin endpoints, health state, shutdown).
//!
//! Nothing here knows about connections or topics tables: those belong to
//! the service that owns them.

pub mod admin;
pub mod announce;
pub mod client;
pub mod discovery;
pub mod health;
pub mod ids;
pub mod listener;
pub mod namespaces;
pub mod rendezvous;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/pushmesh/v1/*.proto` by `build.rs`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("pushmesh.v1");
}
