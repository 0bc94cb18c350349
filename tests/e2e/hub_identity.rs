//! Hub identity (issue 13, item 2): nobody takes a live gateway's id, and
//! under mutual TLS the client certificate says who may call what — only
//! gateway certificates attach, each only as the gateway id it names; only
//! ingress certificates publish and query. A bystander client on the real
//! gateway keeps receiving through every attempt.

use pushmesh_common::ids::{Channel, GatewayId};
use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    AttachRequest, AttachResponse, Hello, PublishRequest, QueryRequest, TopicsChange, attach_request,
};
use pushmesh_tests::pki::Pki;
use pushmesh_tests::*;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Attach like a gateway would (hello, then a subscription); the sender
/// keeps the request stream open while the test holds it.
async fn raw_attach(
    channel: GrpcChannel,
    gateway: &str,
    instance: &str,
    topics: Vec<String>,
) -> (mpsc::Sender<AttachRequest>, Result<Streaming<AttachResponse>, Status>) {
    let (tx, rx) = mpsc::channel(8);
    let hello = Hello { gateway_id: gateway.to_owned(), instance: instance.to_owned() };
    tx.try_send(AttachRequest { kind: Some(attach_request::Kind::Hello(hello)) }).expect("room");
    let sub = TopicsChange { request_id: 1, topics };
    tx.try_send(AttachRequest { kind: Some(attach_request::Kind::Subscribe(sub)) }).expect("room");
    let r = HubClient::new(channel).attach(ReceiverStream::new(rx)).await.map(|r| r.into_inner());
    (tx, r)
}

fn refused(r: Result<Streaming<AttachResponse>, Status>, code: Code, what: &str) -> Status {
    match r {
        Ok(_) => panic!("{what}: the hub accepted the attach"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            s
        }
    }
}

/// The bystander gets `n` fresh channel messages and a direct send, in order.
async fn bystander_receives(ing: std::net::SocketAddr, c: &mut Client, channel: &str, tag: &str) -> anyhow::Result<()> {
    for i in 0..10 {
        let (code, body) = post(ing, "/publish", &json!({ "channel": channel, "data": format!("{tag} {i}") })).await?;
        assert_eq!(code, 200, "{body}");
    }
    for i in 0..10 {
        c.expect_data(&json!(format!("{tag} {i}"))).await?;
    }
    let (code, body) =
        post(ing, "/send", &json!({ "connection": c.connection, "data": format!("{tag} direct") })).await?;
    assert_eq!(code, 200, "{body}");
    c.expect_data(&json!(format!("{tag} direct"))).await?;
    Ok(())
}

/// With the defaults (no TLS): anyone reaching the hub port can still
/// attach, but not under a live gateway's id — the real gateway keeps its
/// channel messages and direct sends. The same process reconnecting (same
/// instance token) does replace its old stream.
#[tokio::test]
async fn a_live_gateway_id_cannot_be_taken_over() -> anyhow::Result<()> {
    let hub = hub().await?;
    let url = hub_url(&hub);
    let gw = gateway(std::slice::from_ref(&url), &[]).await?;
    let ing = ingress(std::slice::from_ref(&url), &[]).await?;
    wait_ready(gw.addr("http")).await?;
    wait_ready(ing.addr("http")).await?;
    let mut c = Client::connect(gw.addr("http"), "").await?;
    c.subscribe("news").await?;
    bystander_receives(ing.addr("http"), &mut c, "news", "before").await?;

    let grpc = Endpoint::from_shared(url.clone())?.connect().await?;
    let topics = vec![Channel::new("news")?.topic(), GatewayId::new(c.gateway.clone())?.topic()];
    let (_thief, r) = raw_attach(grpc.clone(), &c.gateway, "thief", topics.clone()).await;
    let status = refused(r, Code::AlreadyExists, "an attach with the live gateway's id");
    assert!(status.message().contains("attached from another gateway instance"), "{status:?}");
    bystander_receives(ing.addr("http"), &mut c, "news", "after").await?;

    // A second stream of the same instance is a reconnect: it replaces the
    // first, which the hub closes. Another instance is refused meanwhile.
    let (_one, first) = raw_attach(grpc.clone(), "gw-raw", "one", vec![]).await;
    let mut first = first?;
    let (_two, second) = raw_attach(grpc.clone(), "gw-raw", "two", vec![]).await;
    refused(second, Code::AlreadyExists, "another instance with a live id");
    let (_again, third) = raw_attach(grpc.clone(), "gw-raw", "one", vec![]).await;
    let _third = third?;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match first.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the replaced stream must end");

    let m = metrics(hub.addr("admin")).await?;
    assert_eq!(sample(&m, "pushmesh_hub_denied_total", &[("reason", "duplicate_gateway")]), 2.0);
    bystander_receives(ing.addr("http"), &mut c, "news", "last").await?;
    Ok(())
}

/// Under mutual TLS the roles come from the client certificates' SANs.
#[tokio::test]
async fn hub_roles_follow_client_certificates() -> anyhow::Result<()> {
    let pki = Pki::new("roles")?;
    let gw_tls = pki.client("gw-a", &["spiffe://pushmesh/gateway/gw-a"], &[])?;
    let ing_tls = pki.client("ingress", &["spiffe://pushmesh/ingress/api"], &[])?;
    let hub_args = pki.hub_args();
    let hub = hub_with(&hub_args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let url = format!("https://{}", hub.addr("grpc"));
    let mut gw_args: Vec<&str> = gw_tls.iter().map(String::as_str).collect();
    gw_args.extend(["--gateway-id", "gw-a"]);
    let gw = gateway(std::slice::from_ref(&url), &gw_args).await?;
    let ing = ingress(std::slice::from_ref(&url), &ing_tls.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    wait_ready(gw.addr("http")).await?;
    wait_ready(ing.addr("http")).await?;
    let mut c = Client::connect(gw.addr("http"), "").await?;
    assert_eq!(c.gateway, "gw-a");
    c.subscribe("secure").await?;
    bystander_receives(ing.addr("http"), &mut c, "secure", "before").await?;
    let topics = vec![Channel::new("secure")?.topic(), GatewayId::new("gw-a")?.topic()];

    // An ingress certificate cannot attach, under any id.
    let as_ingress = pki.channel(&url, "ingress").await?;
    for id in ["gw-z", "gw-a"] {
        let (_s, r) = raw_attach(as_ingress.clone(), id, "x", topics.clone()).await;
        let s = refused(r, Code::PermissionDenied, "an ingress certificate attaching");
        assert!(s.message().contains("Attach needs a gateway certificate"), "{s:?}");
    }

    // A gateway certificate cannot publish, query or list members.
    let as_gw = pki.channel(&url, "gw-a").await?;
    let mut hub_client = HubClient::new(as_gw.clone());
    let publish = PublishRequest {
        target: Some(pushmesh_common::proto::publish_request::Target::Channel("secure".into())),
        data: b"\"stolen\"".to_vec().into(),
        ..Default::default()
    };
    let s = hub_client.publish(publish).await.expect_err("a gateway certificate publishing");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("Publish needs an ingress certificate"), "{s:?}");
    let s = hub_client.query(QueryRequest::default()).await.expect_err("a gateway certificate querying");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // A gateway certificate attaches only as the id it names…
    let (_s, r) = raw_attach(as_gw.clone(), "gw-b", "x", vec![]).await;
    let s = refused(r, Code::PermissionDenied, "gw-a's certificate attaching as gw-b");
    assert!(s.message().contains("may attach as gateway gw-a only"), "{s:?}");
    // …and not over the live gateway holding it (a copied key, another process).
    let (_s, r) = raw_attach(as_gw.clone(), "gw-a", "stolen", topics.clone()).await;
    refused(r, Code::AlreadyExists, "a second gw-a");

    bystander_receives(ing.addr("http"), &mut c, "secure", "after").await?;
    let m = metrics(hub.addr("admin")).await?;
    assert_eq!(sample(&m, "pushmesh_hub_denied_total", &[("reason", "role")]), 4.0);
    assert_eq!(sample(&m, "pushmesh_hub_denied_total", &[("reason", "gateway_id")]), 1.0);
    assert_eq!(sample(&m, "pushmesh_hub_denied_total", &[("reason", "duplicate_gateway")]), 1.0);
    Ok(())
}

/// A gateway restarted under the same id (a container restarted in its
/// pod) is a new instance: it is admitted once the hub sees the old
/// process's stream end — at once when that process died — and serves.
#[tokio::test]
async fn a_gateway_restarted_under_its_id_attaches_again() -> anyhow::Result<()> {
    let hub = hub().await?;
    let url = hub_url(&hub);
    let ing = ingress(std::slice::from_ref(&url), &[]).await?;
    let mut first = gateway(std::slice::from_ref(&url), &["--gateway-id", "gw-fixed"]).await?;
    wait_ready(first.addr("http")).await?;
    first.kill().await;
    let second = gateway(std::slice::from_ref(&url), &["--gateway-id", "gw-fixed"]).await?;
    wait_ready(second.addr("http")).await?;
    wait_ready(ing.addr("http")).await?;
    let mut c = Client::connect(second.addr("http"), "").await?;
    assert_eq!(c.gateway, "gw-fixed");
    c.subscribe("news").await?;
    let (code, body) = post(ing.addr("http"), "/publish", &json!({ "channel": "news", "data": "back" })).await?;
    assert_eq!(code, 200, "{body}");
    c.expect_data(&json!("back")).await?;
    let (code, body) =
        post(ing.addr("http"), "/send", &json!({ "connection": c.connection, "data": "direct" })).await?;
    assert_eq!(code, 200, "{body}");
    c.expect_data(&json!("direct")).await?;
    Ok(())
}
