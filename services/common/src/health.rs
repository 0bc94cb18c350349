//! Health state that tells the truth: liveness is "the process answers",
//! readiness is "this instance can do its job right now" (a gateway attached
//! to a hub, an ingress that reaches a hub), and drops to false first when a
//! drain starts so load balancers stop sending before sockets close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    /// Why the instance is not ready; `None` when ready.
    reason: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// Starts not ready, for `reason`.
    pub fn new(reason: &str) -> Self {
        let h = Self::default();
        *h.inner.reason.lock().expect("health lock") = Some(reason.to_owned());
        h
    }

    pub fn set_ready(&self) {
        *self.inner.reason.lock().expect("health lock") = None;
    }

    pub fn set_not_ready(&self, reason: &str) {
        *self.inner.reason.lock().expect("health lock") = Some(reason.to_owned());
    }

    /// Once draining, the instance never reports ready again.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// `Ok(())` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: shutting down".to_owned());
        }
        match &*self.inner.reason.lock().expect("health lock") {
            None => Ok(()),
            Some(r) => Err(r.clone()),
        }
    }
}
