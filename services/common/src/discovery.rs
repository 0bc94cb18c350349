//! Where the hubs are: a static list of URLs (local runs, fixed fleets)
//! and/or a DNS name whose addresses are the hubs (a Kubernetes headless
//! Service), re-resolved periodically so hubs can come and go without
//! restarting gateways and ingresses.
//!
//! The result is a `watch` of the current set of hub URLs; gateways attach
//! to each one and ingresses route over them. A failed resolution or an
//! empty answer keeps the previous set: a DNS hiccup must not detach a
//! gateway from hubs that are still there. A hub that really left (its
//! address is gone from a successful answer) is dropped from the set.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// DNS discovery flags, shared by the gateway and the ingress.
#[derive(Debug, Clone, clap::Args)]
pub struct HubDnsArgs {
    /// A DNS name and port whose addresses are the hubs (e.g. a headless
    /// Service: hub-headless.ns.svc.cluster.local:50051), re-resolved every
    /// --hub-dns-interval-secs; adds to --hub.
    #[arg(long, env = "PUSHMESH_HUB_DNS")]
    pub hub_dns: Option<String>,

    /// Seconds between re-resolutions of --hub-dns.
    #[arg(long, env = "PUSHMESH_HUB_DNS_INTERVAL_SECS", default_value_t = 5)]
    pub hub_dns_interval_secs: u64,
}

/// What to resolve, checked once at startup.
#[derive(Debug, Clone)]
pub struct HubSource {
    static_urls: Vec<String>,
    dns: Option<(String, u16)>,
    scheme: &'static str,
    interval: Duration,
}

/// The default hub when neither --hub nor --hub-dns is given (`make run`'s).
pub const LOCAL_HUB: &str = "http://127.0.0.1:50051";

impl HubSource {
    /// `tls`: the hubs speak TLS (URLs from DNS use https).
    pub fn new(static_urls: &[String], args: &HubDnsArgs, tls: bool) -> anyhow::Result<Self> {
        let static_urls: Vec<String> = static_urls.iter().filter(|u| !u.trim().is_empty()).cloned().collect();
        let dns = match &args.hub_dns {
            None => None,
            Some(spec) => {
                let (host, port) = spec.rsplit_once(':').ok_or_else(|| {
                    anyhow::anyhow!("--hub-dns {spec:?} needs a port: NAME:PORT, e.g. hub-headless:50051")
                })?;
                let port: u16 = port.parse().map_err(|_| {
                    anyhow::anyhow!("--hub-dns {spec:?}: port {port:?} is not a number from 1 to 65535")
                })?;
                if host.is_empty() || port == 0 {
                    anyhow::bail!("--hub-dns {spec:?}: expected NAME:PORT, e.g. hub-headless:50051");
                }
                Some((host.to_owned(), port))
            }
        };
        let static_urls =
            if static_urls.is_empty() && dns.is_none() { vec![LOCAL_HUB.to_owned()] } else { static_urls };
        let interval = Duration::from_secs(args.hub_dns_interval_secs.max(1));
        Ok(Self { static_urls, dns, scheme: if tls { "https" } else { "http" }, interval })
    }

    pub fn static_urls(&self) -> &[String] {
        &self.static_urls
    }

    pub fn has_dns(&self) -> bool {
        self.dns.is_some()
    }

    /// Resolve once now (so startup knows its hubs), then keep resolving
    /// on a task until `stop`; the receiver always holds the latest set.
    pub async fn watch(self, stop: CancellationToken) -> watch::Receiver<Vec<String>> {
        let mut current: BTreeSet<String> = self.static_urls.iter().cloned().collect();
        if let Some(found) = self.resolve().await {
            current.extend(found);
        }
        let (tx, rx) = watch::channel(current.iter().cloned().collect());
        if self.dns.is_none() {
            // Nothing will change: the closed channel tells followers so.
            return rx;
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(found) = self.resolve().await else { continue };
                let next: BTreeSet<String> = self.static_urls.iter().cloned().chain(found).collect();
                if next != current {
                    tracing::info!(hubs = ?next, "hub set changed (DNS)");
                    current = next;
                    tx.send_replace(current.iter().cloned().collect());
                }
            }
        });
        rx
    }

    /// The URLs the DNS name answers now; `None` when resolution failed or
    /// found nothing (keep what we had).
    async fn resolve(&self) -> Option<BTreeSet<String>> {
        let (host, port) = self.dns.as_ref()?;
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host.as_str(), *port))).await {
            Ok(Ok(addrs)) => {
                let urls: BTreeSet<String> = addrs.map(|a| url(self.scheme, a)).collect();
                if urls.is_empty() {
                    tracing::warn!(name = %host, "hub DNS name has no addresses; keeping the current hubs");
                    return None;
                }
                Some(urls)
            }
            Ok(Err(e)) => {
                tracing::warn!(name = %host, error = %e, "hub DNS lookup failed; keeping the current hubs");
                None
            }
            Err(_) => {
                tracing::warn!(name = %host, "hub DNS lookup timed out; keeping the current hubs");
                None
            }
        }
    }
}

fn url(scheme: &str, addr: SocketAddr) -> String {
    // SocketAddr's Display brackets IPv6 addresses, as URLs need.
    format!("{scheme}://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dns: Option<&str>) -> HubDnsArgs {
        HubDnsArgs { hub_dns: dns.map(str::to_owned), hub_dns_interval_secs: 5 }
    }

    #[test]
    fn no_hub_at_all_means_the_local_one() {
        let s = HubSource::new(&[], &args(None), false).unwrap();
        assert_eq!(s.static_urls(), [LOCAL_HUB]);
        let s = HubSource::new(&[], &args(Some("hubs:50051")), false).unwrap();
        assert!(s.static_urls().is_empty() && s.has_dns());
    }

    #[test]
    fn a_dns_spec_needs_a_name_and_a_port() {
        for bad in ["hubs", "hubs:", ":50051", "hubs:x", "hubs:0", "hubs:70000"] {
            let e = HubSource::new(&[], &args(Some(bad)), false).unwrap_err().to_string();
            assert!(e.contains("--hub-dns"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn resolves_every_address_of_the_name() {
        let s = HubSource::new(&[], &args(Some("localhost:50051")), false).unwrap();
        let rx = s.watch(CancellationToken::new()).await;
        let urls = rx.borrow().clone();
        assert!(!urls.is_empty(), "localhost resolves");
        assert!(urls.iter().all(|u| u.starts_with("http://") && u.ends_with(":50051")), "{urls:?}");
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(url("https", "[::1]:50051".parse().unwrap()), "https://[::1]:50051");
    }
}
