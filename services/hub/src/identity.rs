//! Who may call which hub RPC.
//!
//! With `--tls-client-ca` (mutual TLS) every caller holds a certificate the
//! CA signed, and its subject alternative names say what it is:
//!
//! | SAN                                         | may                                   |
//! |---------------------------------------------|---------------------------------------|
//! | URI `spiffe://pushmesh/gateway/<id>`         | `Attach` as gateway `<id>` only; `History` |
//! | URI `spiffe://pushmesh/gateway`, DNS `pushmesh-gateway` | `Attach` as any gateway id; `History` |
//! | URI `spiffe://pushmesh/ingress[/<name>]`, DNS `pushmesh-ingress` | `Publish`, `PublishStream`, `Query`, `History`, `Members` |
//!
//! A certificate may carry several (a role each); one with none of them is
//! refused everything but gRPC health. Per-pod certificates naming the
//! gateway id (cert-manager with the pod name) are the strong form: a
//! gateway's key then cannot be used to take another gateway's traffic.
//! The role-only names exist for tools that cannot write URI SANs, such
//! as Helm's `genSignedCert`; any holder of such a certificate can attach
//! under any gateway id (but never twice with a live one: see `topics`).
//!
//! Without client certificates there is no identity to check: every RPC is
//! open to whoever reaches the port (the NetworkPolicy is then the guard).
//! The certificate is parsed per call, a few microseconds next to the
//! rest of a publish; the stream RPCs parse it once.

use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

use crate::metrics::HubMetrics;

/// The URI SAN prefix of pushmesh identities (a SPIFFE id in the
/// `pushmesh` trust domain).
pub const SPIFFE_PREFIX: &str = "spiffe://pushmesh/";
/// The role-only DNS SAN of gateway certificates.
pub const GATEWAY_DNS: &str = "pushmesh-gateway";
/// The role-only DNS SAN of ingress certificates.
pub const INGRESS_DNS: &str = "pushmesh-ingress";

/// What one hub RPC requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Attach,
    Publish,
    PublishStream,
    Query,
    History,
    Members,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::Attach => "Attach",
            Rpc::Publish => "Publish",
            Rpc::PublishStream => "PublishStream",
            Rpc::Query => "Query",
            Rpc::History => "History",
            Rpc::Members => "Members",
        }
    }

    fn allows(self, who: &Identity) -> bool {
        let gateway = who.gateway.is_some();
        match self {
            Rpc::Attach => gateway,
            // Gateways read history to recover clients' missed messages.
            Rpc::History => gateway || who.ingress,
            Rpc::Publish | Rpc::PublishStream | Rpc::Query | Rpc::Members => who.ingress,
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Rpc::Attach => "a gateway certificate",
            Rpc::History => "a gateway or ingress certificate",
            _ => "an ingress certificate",
        }
    }
}

/// Which gateway ids a gateway certificate may attach as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayIds {
    /// A role-only certificate: any id.
    Any,
    /// Ids named in the certificate's URI SANs.
    Only(Vec<String>),
}

/// The roles read from one client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub gateway: Option<GatewayIds>,
    pub ingress: bool,
}

impl Identity {
    /// Read the roles from a DER certificate's subject alternative names.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let mut who = Identity::default();
        let mut ids = Vec::new();
        let mut any_gateway = false;
        let san = cert.subject_alternative_name().map_err(|e| format!("unreadable subject alternative names: {e}"))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::URI(uri) => match uri.strip_prefix(SPIFFE_PREFIX) {
                    Some("gateway") => any_gateway = true,
                    Some(path) if path.starts_with("gateway/") => ids.push(path["gateway/".len()..].to_owned()),
                    Some(path) if path == "ingress" || path.starts_with("ingress/") => who.ingress = true,
                    _ => {}
                },
                GeneralName::DNSName(GATEWAY_DNS) => any_gateway = true,
                GeneralName::DNSName(INGRESS_DNS) => who.ingress = true,
                _ => {}
            }
        }
        who.gateway = if any_gateway {
            Some(GatewayIds::Any)
        } else if !ids.is_empty() {
            Some(GatewayIds::Only(ids))
        } else {
            None
        };
        Ok(who)
    }

    fn describe(&self) -> String {
        let mut roles = Vec::new();
        match &self.gateway {
            Some(GatewayIds::Any) => roles.push("gateway (any id)".to_owned()),
            Some(GatewayIds::Only(ids)) => roles.push(format!("gateway {}", ids.join(", "))),
            None => {}
        }
        if self.ingress {
            roles.push("ingress".to_owned());
        }
        if roles.is_empty() { "no pushmesh role".to_owned() } else { roles.join(" and ") }
    }
}

/// The caller of one RPC, once admitted.
#[derive(Debug, Clone)]
pub enum Caller {
    /// mTLS is off: nothing is known about the caller.
    Anyone,
    Cert(Identity),
}

/// Checks callers against the RPC they call (see the module doc).
#[derive(Clone)]
pub struct Access {
    /// Client certificates are required (`--tls-client-ca`).
    enforce: bool,
    metrics: HubMetrics,
}

impl Access {
    pub fn new(enforce: bool, metrics: HubMetrics) -> Self {
        Self { enforce, metrics }
    }

    /// Admit the caller of `rpc`, or say why not (PERMISSION_DENIED).
    pub fn check<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<Caller, Status> {
        if !self.enforce {
            return Ok(Caller::Anyone);
        }
        let Some(certs) = request.peer_certs() else {
            // The TLS layer requires a certificate; this is a safety net.
            return Err(self.deny("no_certificate", format!("{} needs a client certificate", rpc.name())));
        };
        let Some(leaf) = certs.first() else {
            return Err(self.deny("no_certificate", format!("{} needs a client certificate", rpc.name())));
        };
        let who = Identity::from_der(leaf.as_ref()).map_err(|e| self.deny("role", e))?;
        if !rpc.allows(&who) {
            return Err(self.deny(
                "role",
                format!(
                    "{} needs {}; the client certificate has {} (see docs/security.md, hub identities)",
                    rpc.name(),
                    rpc.needs(),
                    who.describe()
                ),
            ));
        }
        Ok(Caller::Cert(who))
    }

    /// May this (admitted) caller attach as `gateway`?
    pub fn check_gateway_id(&self, caller: &Caller, gateway: &str) -> Result<(), Status> {
        match caller {
            Caller::Cert(Identity { gateway: Some(GatewayIds::Only(ids)), .. })
                if !ids.iter().any(|id| id == gateway) =>
            {
                Err(self.deny(
                    "gateway_id",
                    format!("this client certificate may attach as gateway {} only, not as {gateway}", ids.join(", ")),
                ))
            }
            _ => Ok(()),
        }
    }

    fn deny(&self, reason: &str, message: String) -> Status {
        self.metrics.denied.with_label_values(&[reason]).inc();
        tracing::warn!(reason, %message, "hub call refused");
        Status::permission_denied(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn roles_come_from_the_sans() {
        let gw = Identity::from_der(&cert(vec![uri("spiffe://pushmesh/gateway/gw-a")])).unwrap();
        assert_eq!(gw, Identity { gateway: Some(GatewayIds::Only(vec!["gw-a".into()])), ingress: false });
        assert!(Rpc::Attach.allows(&gw) && Rpc::History.allows(&gw));
        assert!(!Rpc::Publish.allows(&gw) && !Rpc::Query.allows(&gw) && !Rpc::PublishStream.allows(&gw));

        let ing = Identity::from_der(&cert(vec![uri("spiffe://pushmesh/ingress/api-1")])).unwrap();
        assert_eq!(ing, Identity { gateway: None, ingress: true });
        assert!(!Rpc::Attach.allows(&ing) && Rpc::Publish.allows(&ing) && Rpc::Members.allows(&ing));

        let by_dns = Identity::from_der(&cert(vec![dns("pushmesh-gateway"), dns("pushmesh-ingress")])).unwrap();
        assert_eq!(by_dns, Identity { gateway: Some(GatewayIds::Any), ingress: true });

        // Lookalikes give nothing.
        for sans in [
            vec![uri("spiffe://other/gateway/gw-a")],
            vec![uri("spiffe://pushmesh/gatewayx")],
            vec![dns("pushmesh-client")],
            vec![dns("gw-a.pushmesh-gateway")],
        ] {
            let who = Identity::from_der(&cert(sans.clone())).unwrap();
            assert_eq!(who, Identity::default(), "{sans:?}");
            assert!(!Rpc::Attach.allows(&who) && !Rpc::History.allows(&who) && !Rpc::Publish.allows(&who));
        }
    }
}
