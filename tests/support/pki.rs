//! A throw-away certificate authority for TLS tests: a CA, a hub server
//! certificate for 127.0.0.1/localhost, and client certificates with the
//! subject alternative names a test asks for (the hub reads roles from
//! them: see docs/security.md, hub identities), all PEM files in one
//! directory under the test logs.

use std::path::PathBuf;

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};

pub struct Pki {
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA and hub certificate in a fresh directory named for `tag`.
    pub fn new(tag: &str) -> Result<Pki> {
        let dir = crate::bin_dir().parent().expect("target dir").join("test-logs").join(format!(
            "pki-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "pushmesh test CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        let pki = Pki { dir, issuer: Issuer::new(ca, ca_key) };

        let hub_key = KeyPair::generate()?;
        let mut hub = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let hub_cert = hub.signed_by(&hub_key, &pki.issuer)?;
        std::fs::write(pki.dir.join("hub.pem"), hub_cert.pem())?;
        std::fs::write(pki.dir.join("hub-key.pem"), hub_key.serialize_pem())?;
        Ok(pki)
    }

    /// The path of one of the PEM files, as a string for a flag.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The hub's flags for mutual TLS with this CA.
    pub fn hub_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("hub.pem"),
            "--tls-key".into(),
            self.path("hub-key.pem"),
            "--tls-client-ca".into(),
            self.path("ca.pem"),
        ]
    }

    /// Issue a client certificate `<name>.pem` / `<name>-key.pem` with
    /// these URI and DNS SANs; the gateway/ingress flags that present it.
    pub fn client(&self, name: &str, uris: &[&str], dns: &[&str]) -> Result<Vec<String>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        for u in uris {
            params.subject_alt_names.push(SanType::URI((*u).try_into()?));
        }
        for d in dns {
            params.subject_alt_names.push(SanType::DnsName((*d).try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(self.dir.join(format!("{name}-key.pem")), key.serialize_pem())?;
        Ok(vec![
            "--hub-tls-ca".into(),
            self.path("ca.pem"),
            "--hub-tls-cert".into(),
            self.path(&format!("{name}.pem")),
            "--hub-tls-key".into(),
            self.path(&format!("{name}-key.pem")),
        ])
    }

    /// A raw gRPC channel to `url` presenting the client certificate `name`.
    pub async fn channel(&self, url: &str, name: &str) -> Result<tonic::transport::Channel> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.dir.join("ca.pem"))?))
            .identity(Identity::from_pem(
                std::fs::read(self.dir.join(format!("{name}.pem")))?,
                std::fs::read(self.dir.join(format!("{name}-key.pem")))?,
            ));
        Ok(Endpoint::from_shared(url.to_owned())?.tls_config(tls)?.connect().await?)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
