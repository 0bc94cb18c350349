//! Repository-level contracts, checked against the real code: the docs'
//! flag tables against every binary's clap definitions (`docs`), and the
//! dashboards' and alerts' PromQL against the metrics the services really
//! export (`dashboards`). They belong to the repository, not to one crate.

mod dashboards;
mod docs;
mod modules;
