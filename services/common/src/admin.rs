//! The admin endpoints every service serves: `/healthz`, `/readyz` and
//! `/metrics`, as warp filters (the hub and ingress mount them in their warp
//! servers) and as plain functions (the gateway answers them from its own
//! hyper service, beside the WebSocket upgrade).

use prometheus::{Encoder, Registry, TextEncoder};
use warp::Filter;
use warp::http::StatusCode;

use crate::health::Health;

/// A fresh registry for one service instance, with process CPU/RSS/fd
/// metrics. One registry per instance (never the global default) so two
/// instances can run in one test process.
pub fn registry() -> Registry {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        let _ = r.register(Box::new(pc));
    }
    r
}

/// `(status, body)` of `/readyz`.
pub fn readyz(health: &Health) -> (StatusCode, String) {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// The Prometheus text exposition of `registry`.
pub fn metrics_text(registry: &Registry) -> String {
    let mut buf = Vec::with_capacity(8 * 1024);
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn routes(
    health: Health,
    registry: Registry,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response_());
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let (code, body) = readyz(&health);
        warp::reply::with_status(body, code).into_response_()
    });
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(metrics_text(&registry), "content-type", METRICS_CONTENT_TYPE).into_response_()
    });
    healthz.or(readyz).unify().or(metrics).unify()
}

trait IntoResponse_ {
    fn into_response_(self) -> warp::reply::Response;
}

impl<T: warp::Reply> IntoResponse_ for T {
    fn into_response_(self) -> warp::reply::Response {
        self.into_response()
    }
}
