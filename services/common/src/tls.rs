//! TLS (and mutual TLS) on the gRPC links between pods, with rustls: the
//! hub serves with its certificate and, given a client CA, requires every
//! gateway and ingress to present a certificate that CA signed; gateways
//! and ingresses verify the hub against a CA and present their own
//! certificate. PEM files come from a mounted Kubernetes Secret.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// The hub's server TLS: `None` unless a certificate is configured.
pub fn server(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (cert, key) = match (cert, key) {
        (None, None) => {
            anyhow::ensure!(client_ca.is_none(), "--tls-client-ca needs --tls-cert and --tls-key");
            return Ok(None);
        }
        (Some(c), Some(k)) => (c, k),
        _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
    };
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok(Some(tls))
}

/// A client's TLS towards the hubs: `None` unless a CA is configured.
pub fn client(
    ca: Option<&PathBuf>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    domain: Option<&str>,
) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = ca else {
        anyhow::ensure!(cert.is_none() && key.is_none(), "--hub-tls-cert/--hub-tls-key need --hub-tls-ca");
        return Ok(None);
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "hub CA")?));
    match (cert, key) {
        (Some(c), Some(k)) => {
            tls = tls.identity(Identity::from_pem(read(c, "client certificate")?, read(k, "client key")?))
        }
        (None, None) => {}
        _ => anyhow::bail!("give both --hub-tls-cert and --hub-tls-key, or neither"),
    }
    if let Some(d) = domain {
        tls = tls.domain_name(d);
    }
    Ok(Some(tls))
}

/// Client-side TLS flags, shared by the gateway and the ingress.
#[derive(Debug, Clone, clap::Args)]
pub struct HubTlsArgs {
    /// CA certificate (PEM) that signed the hubs' certificates; turns on
    /// TLS towards the hubs (use https:// hub URLs).
    #[arg(long, env = "PUSHMESH_HUB_TLS_CA")]
    pub hub_tls_ca: Option<PathBuf>,
    /// This pod's client certificate (PEM), for hubs that require mutual TLS.
    #[arg(long, env = "PUSHMESH_HUB_TLS_CERT")]
    pub hub_tls_cert: Option<PathBuf>,
    /// The key of --hub-tls-cert (PEM).
    #[arg(long, env = "PUSHMESH_HUB_TLS_KEY")]
    pub hub_tls_key: Option<PathBuf>,
    /// Name to verify in the hubs' certificates (default: the URL's host).
    #[arg(long, env = "PUSHMESH_HUB_TLS_DOMAIN")]
    pub hub_tls_domain: Option<String>,
}

impl HubTlsArgs {
    pub fn client_config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        client(
            self.hub_tls_ca.as_ref(),
            self.hub_tls_cert.as_ref(),
            self.hub_tls_key.as_ref(),
            self.hub_tls_domain.as_deref(),
        )
    }
}
