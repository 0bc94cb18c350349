//! pushmesh ws-gateway: client WebSocket connections and local fan-out.
//!
//! Read top down, a delivery's walk is: `hubs` (the link task holding one
//! hub's `Attach` stream) → `fanout` (find the recipients in `registry`,
//! ask `recovery` about recovering ones, encode once with `protocol`) →
//! `queue` (write into each socket). A client's walk: `http` (accept,
//! admission, upgrade) → `connection` (auth, commands) → `registry` (join,
//! leave) → `links` (interest sent to every hub, confirmations). `sse` is
//! the Server-Sent Events front: the same connections, one-way.
//! `pushmesh_common::namespaces` holds the options per channel prefix
//! (shared with the hub, which reads the same file), and `proxy` the
//! calls to the application's backend that client commands may need.
//! `server` wires the parts; no module imports a module that imports it
//! back.

pub mod admission;
pub mod auth;
pub mod config;
pub mod connection;
pub mod dedupe;
pub mod fanout;
pub mod http;
pub mod hubs;
pub mod jwks;
pub mod links;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod queries;
pub mod queue;
pub mod recovery;
pub mod registry;
pub mod server;
pub mod sse;

pub use config::Config;
pub use server::Gateway;
