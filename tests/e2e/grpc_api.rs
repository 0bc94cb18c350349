//! The server API over gRPC: the same commands as HTTP, with gRPC statuses.

use pushmesh_common::proto::push_api_client::PushApiClient;
use pushmesh_common::proto::{
    ApiBroadcastRequest, ApiDisconnectRequest, ApiMembershipRequest, ApiPresenceRequest, ApiPublishRequest,
    ApiSendRequest, ApiStatsRequest,
};
use pushmesh_tests::*;
use serde_json::json;

const KEY: &str = "grpc-admin-key-0123456789";

#[tokio::test]
async fn backends_drive_everything_over_grpc() -> anyhow::Result<()> {
    let sys =
        System::start_with(2, 2, &[], &["--api-key", &format!("{KEY},grpc-publish-key-0123456789:publish")]).await?;
    let url = format!("http://{}", sys.ingress.addr("grpc"));
    let mut api = PushApiClient::connect(url).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let mut b = Client::connect(sys.gw(1), "").await?;

    // Server-side subscribe, publish, send, broadcast.
    api.subscribe(with_key(KEY, ApiMembershipRequest { connection: a.connection.clone(), channel: "g".into() }))
        .await?;
    assert_eq!(a.next_json().await?["type"], "subscribed");
    let p = api
        .publish(with_key(
            KEY,
            ApiPublishRequest { channel: "g".into(), data_json: r#"{"x":1}"#.into(), idempotency_key: String::new() },
        ))
        .await?
        .into_inner();
    assert_eq!((p.gateways, p.offset), (1, 1));
    a.expect_data(&json!({ "x": 1 })).await?;
    api.send(with_key(
        KEY,
        ApiSendRequest { connection: b.connection.clone(), data_json: "\"hi b\"".into(), ..Default::default() },
    ))
    .await?;
    b.expect_data(&json!("hi b")).await?;
    let r = api
        .broadcast(with_key(
            "grpc-publish-key-0123456789",
            ApiBroadcastRequest { data_json: "2".into(), exclude: vec![] },
        ))
        .await?
        .into_inner();
    assert_eq!(r.gateways, 2);
    a.expect_data(&json!(2)).await?;
    b.expect_data(&json!(2)).await?;

    // Presence and stats.
    let pr = api.presence(with_key(KEY, ApiPresenceRequest { channel: "g".into(), limit: 0 })).await?.into_inner();
    assert_eq!((pr.connections, pr.clients.len(), pr.clients[0].connection.as_str()), (1, 1, a.connection.as_str()));
    let st = api.stats(with_key(KEY, ApiStatsRequest {})).await?.into_inner();
    assert_eq!((st.connections, st.gateways.len()), (2, 2));

    // Errors are statuses with the HTTP API's message and code.
    let e = api
        .publish(tonic::Request::new(ApiPublishRequest {
            channel: "g".into(),
            data_json: "1".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = api.stats(with_key("grpc-publish-key-0123456789", ApiStatsRequest {})).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = api
        .publish(with_key(
            KEY,
            ApiPublishRequest { channel: "bad name".into(), data_json: "1".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.metadata().get("pushmesh-error-code").unwrap(), "invalid_channel");
    assert!(e.message().contains("allowed characters"), "{}", e.message());
    let e = api
        .publish(with_key(
            KEY,
            ApiPublishRequest { channel: "g".into(), data_json: "{not json".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = api
        .send(with_key(
            KEY,
            ApiSendRequest { connection: "ghost:1".into(), data_json: "1".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Disconnect with a code the client sees.
    let d = api
        .disconnect(with_key(
            KEY,
            ApiDisconnectRequest {
                connection: b.connection.clone(),
                code: 4321,
                reason: "bye".into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    assert_eq!(d.disconnected, 1);
    assert_eq!(b.expect_close().await?, (4321, "bye".to_owned()));
    Ok(())
}

fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}
