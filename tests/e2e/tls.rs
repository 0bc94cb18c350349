//! Mutual TLS on the gRPC links: with the hub requiring client
//! certificates, only gateways and ingresses holding one signed by the CA
//! attach and publish; everything still flows end to end.

use std::path::{Path, PathBuf};

use pushmesh_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use serde_json::json;

/// A CA, a hub certificate for 127.0.0.1, and a client certificate, as PEM
/// files in `dir`.
fn pki(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "pushmesh test CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let hub_key = KeyPair::generate()?;
    let mut hub = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let hub_cert = hub.signed_by(&hub_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(vec!["pushmesh-client".to_owned()])?;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("hub.pem"), hub_cert.pem())?;
    std::fs::write(dir.join("hub-key.pem"), hub_key.serialize_pem())?;
    std::fs::write(dir.join("client.pem"), client_cert.pem())?;
    std::fs::write(dir.join("client-key.pem"), client_key.serialize_pem())?;
    Ok(())
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[tokio::test]
async fn mutual_tls_between_pods() -> anyhow::Result<()> {
    let dir: PathBuf = bin_dir().parent().unwrap().join("test-logs").join(format!("tls-{}", std::process::id()));
    pki(&dir)?;
    let hub = Proc::start(
        "hub",
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--warmup-ms",
            "300",
            "--tls-cert",
            &p(&dir, "hub.pem"),
            "--tls-key",
            &p(&dir, "hub-key.pem"),
            "--tls-client-ca",
            &p(&dir, "ca.pem"),
        ],
    )
    .await?;
    let url = format!("https://{}", hub.addr("grpc"));
    let tls = [
        "--hub-tls-ca",
        &p(&dir, "ca.pem"),
        "--hub-tls-cert",
        &p(&dir, "client.pem"),
        "--hub-tls-key",
        &p(&dir, "client-key.pem"),
    ];
    let gw = gateway(std::slice::from_ref(&url), &tls).await?;
    let ing = ingress(std::slice::from_ref(&url), &tls).await?;
    wait_ready(gw.addr("http")).await?;
    wait_ready(ing.addr("http")).await?;

    let mut c = Client::connect(gw.addr("http"), "").await?;
    c.subscribe("secure").await?;
    let (code, body) = post(ing.addr("http"), "/publish", &json!({ "channel": "secure", "data": "over mTLS" })).await?;
    assert_eq!(code, 200, "{body}");
    c.expect_data(&json!("over mTLS")).await?;

    // Without a client certificate, or without TLS at all: never attached.
    let no_cert = gateway(std::slice::from_ref(&url), &["--hub-tls-ca", &p(&dir, "ca.pem")]).await?;
    let plain = gateway(&[format!("http://{}", hub.addr("grpc"))], &[]).await?;
    // Not a sleep and a look: wait until each has tried and failed at least
    // twice (its debug log says so for each attempt), then check it never
    // attached.
    for (g, what) in [(&no_cert, "a gateway without a client certificate"), (&plain, "a plain-text gateway")] {
        let addr = g.addr("http");
        eventually(&format!("{what} to fail attaching twice"), || async move {
            (g.logs().matches("hub not reachable; retrying").count() >= 2).then_some(())
        })
        .await?;
        assert_eq!(get(addr, "/readyz").await?.0, 503, "{what} must not attach");
        let m = metrics(addr).await?;
        assert_eq!(sample(&m, "pushmesh_gateway_hubs_attached", &[]), 0.0, "{what} must not attach");
    }
    let m = metrics(hub.addr("admin")).await?;
    assert_eq!(sample(&m, "pushmesh_hub_gateways_attached", &[]), 1.0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
