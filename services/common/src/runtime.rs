//! The tokio runtime a service runs on, sized by `--worker-threads`.
//!
//! By default tokio starts one worker thread per CPU this process may use.
//! Where several services share few cores (a small pod, a laptop, the
//! benchmark's 2 cores) fewer threads can be cheaper: a message that hops
//! between tasks on one thread costs no futex wake-up or inter-processor
//! interrupt, which on a 2-core VM is a large share of a request's CPU
//! (docs/performance.md).

use anyhow::Context;

/// Runtime flags every service takes (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Runtime worker threads (default: one per CPU this process may use).
    #[arg(long, env = "PUSHMESH_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl RuntimeArgs {
    pub fn build(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = self.worker_threads {
            anyhow::ensure!(n > 0, "--worker-threads must be at least 1");
            b.worker_threads(n);
        }
        b.enable_all().build().context("starting the async runtime")
    }
}
