//! The server API as gRPC (`pushmesh.v1.PushApi`): each RPC builds the same
//! body the HTTP route parses, passes the same access check and calls the
//! same `Commands` method, so the two transports cannot drift apart; the
//! typed results map field by field. Errors become gRPC statuses carrying
//! the HTTP API's message, with its error code in `pushmesh-error-code`.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::Message as _;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use pushmesh_common::proto::push_api_server::PushApi;
use pushmesh_common::proto::{
    ApiBroadcastRequest, ApiClient, ApiDisconnectRequest, ApiDisconnectResponse, ApiEmpty, ApiFailure, ApiGatewayStats,
    ApiHistoryMessage, ApiHistoryRequest, ApiHistoryResponse, ApiMembershipRequest, ApiPresenceRequest,
    ApiPresenceResponse, ApiPublishRequest, ApiPublishResponse, ApiSendRequest, ApiStatsRequest, ApiStatsResponse,
    ApiStreamRequest, ApiStreamResult, api_stream_request, api_stream_result,
};

use crate::access::Transport;
use crate::commands::{BroadcastBody, DisconnectBody, MembershipBody, PublishBody, Published, SendBody};
use crate::error::ApiError;
use crate::keys::Scope;
use crate::state::State;

pub struct GrpcApi {
    state: Arc<State>,
}

impl GrpcApi {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// The HTTP API's checks, in the same order: rate limit (per client IP),
    /// API key, then size (the request's encoded size against
    /// `--max-body-bytes`; tonic's own decoding limit sits a little above it
    /// so an oversized request gets this clear 413-like error).
    fn authorize<T: prost::Message>(&self, req: &Request<T>, needs: Scope) -> Result<(), Status> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let peer = req.remote_addr().map(|a| a.ip());
        self.state.access.check(header, peer, needs, Transport::Grpc).map_err(ApiError::into_status)?;
        let limit = self.state.access.max_body;
        if req.get_ref().encoded_len() as u64 > limit {
            return Err(ApiError::PayloadTooLarge { limit }.into_status());
        }
        Ok(())
    }
}

fn to_status(e: ApiError) -> Status {
    e.into_status()
}

fn data(json: String) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(json).map_err(|e| ApiError::InvalidRequest(format!("data_json is not valid JSON: {e}")))
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn published(p: Published) -> ApiPublishResponse {
    ApiPublishResponse {
        gateways: p.gateways,
        epoch: p.epoch.unwrap_or_default(),
        offset: p.offset.unwrap_or(0),
        duplicate: p.duplicate,
        delivered: p.delivered.unwrap_or(false),
    }
}

// The gRPC requests as the HTTP API's bodies: one path for both.

fn publish_body(r: ApiPublishRequest) -> Result<PublishBody, ApiError> {
    Ok(PublishBody { channel: r.channel, data: data(r.data_json)?, idempotency_key: opt(r.idempotency_key), _op: None })
}

fn broadcast_body(r: ApiBroadcastRequest) -> Result<BroadcastBody, ApiError> {
    Ok(BroadcastBody { data: data(r.data_json)?, exclude: r.exclude, _op: None })
}

fn send_body(r: ApiSendRequest) -> Result<SendBody, ApiError> {
    Ok(SendBody {
        connection: opt(r.connection),
        user: opt(r.user),
        data: data(r.data_json)?,
        exclude: r.exclude,
        confirm: r.confirm,
        _op: None,
    })
}

/// Most items of one `PublishStream` being handled at once; past it the
/// stream is read no further until some are answered (flow control then
/// holds the caller back).
const STREAM_IN_FLIGHT: usize = 4096;

impl GrpcApi {
    /// One item of a `PublishStream`: the same checks and command as the
    /// unary RPC (its rate-limit token and size included), answered by id.
    async fn stream_item(state: &State, peer: Option<std::net::IpAddr>, item: ApiStreamRequest) -> ApiStreamResult {
        let size = item.encoded_len() as u64;
        let outcome = async {
            if let Some(ip) = peer {
                state.access.charge(ip, 1)?;
            }
            if size > state.access.max_body {
                return Err(ApiError::PayloadTooLarge { limit: state.access.max_body });
            }
            let c = &state.commands;
            match item.command {
                Some(api_stream_request::Command::Publish(r)) => c.publish(publish_body(r)?).await,
                Some(api_stream_request::Command::Broadcast(r)) => c.broadcast(broadcast_body(r)?).await,
                Some(api_stream_request::Command::Send(r)) => c.send(send_body(r)?).await,
                None => {
                    Err(ApiError::InvalidRequest("the item has no command (publish, broadcast or send)".to_owned()))
                }
            }
        }
        .await;
        let outcome = match outcome {
            Ok(p) => api_stream_result::Outcome::Ok(published(p)),
            Err(e) => {
                api_stream_result::Outcome::Error(ApiFailure { code: e.code().to_owned(), message: e.to_string() })
            }
        };
        ApiStreamResult { id: item.id, outcome: Some(outcome) }
    }
}

#[tonic::async_trait]
impl PushApi for GrpcApi {
    async fn publish(&self, req: Request<ApiPublishRequest>) -> Result<Response<ApiPublishResponse>, Status> {
        self.authorize(&req, Scope::Publish)?;
        let body = publish_body(req.into_inner()).map_err(to_status)?;
        let v = self.state.commands.publish(body).await.map_err(to_status)?;
        Ok(Response::new(published(v)))
    }

    async fn broadcast(&self, req: Request<ApiBroadcastRequest>) -> Result<Response<ApiPublishResponse>, Status> {
        self.authorize(&req, Scope::Publish)?;
        let body = broadcast_body(req.into_inner()).map_err(to_status)?;
        let v = self.state.commands.broadcast(body).await.map_err(to_status)?;
        Ok(Response::new(published(v)))
    }

    async fn send(&self, req: Request<ApiSendRequest>) -> Result<Response<ApiPublishResponse>, Status> {
        self.authorize(&req, Scope::Publish)?;
        let body = send_body(req.into_inner()).map_err(to_status)?;
        let v = self.state.commands.send(body).await.map_err(to_status)?;
        Ok(Response::new(published(v)))
    }

    async fn subscribe(&self, req: Request<ApiMembershipRequest>) -> Result<Response<ApiEmpty>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let body = MembershipBody { connection: r.connection, channel: r.channel, _op: None };
        self.state.commands.subscribe(body, true).await.map_err(to_status)?;
        Ok(Response::new(ApiEmpty {}))
    }

    async fn unsubscribe(&self, req: Request<ApiMembershipRequest>) -> Result<Response<ApiEmpty>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let body = MembershipBody { connection: r.connection, channel: r.channel, _op: None };
        self.state.commands.subscribe(body, false).await.map_err(to_status)?;
        Ok(Response::new(ApiEmpty {}))
    }

    async fn disconnect(&self, req: Request<ApiDisconnectRequest>) -> Result<Response<ApiDisconnectResponse>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let body = DisconnectBody {
            connection: opt(r.connection),
            user: opt(r.user),
            code: (r.code != 0).then_some(r.code),
            reason: opt(r.reason),
            _op: None,
        };
        let d = self.state.commands.disconnect(body).await.map_err(to_status)?;
        Ok(Response::new(ApiDisconnectResponse { disconnected: d.disconnected, partial: d.partial.unwrap_or(false) }))
    }

    async fn presence(&self, req: Request<ApiPresenceRequest>) -> Result<Response<ApiPresenceResponse>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let limit = (r.limit != 0).then_some(r.limit.min(10_000));
        let p = self.state.commands.presence(r.channel, limit).await.map_err(to_status)?;
        Ok(Response::new(ApiPresenceResponse {
            connections: p.connections,
            users: p.users,
            clients: p
                .clients
                .into_iter()
                .map(|c| ApiClient { connection: c.connection, user: c.user.unwrap_or_default() })
                .collect(),
            partial: p.partial,
        }))
    }

    async fn stats(&self, req: Request<ApiStatsRequest>) -> Result<Response<ApiStatsResponse>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let s = self.state.commands.stats().await.map_err(to_status)?;
        Ok(Response::new(ApiStatsResponse {
            connections: s.connections,
            channels: s.channels,
            gateways: s
                .gateways
                .into_iter()
                .map(|g| ApiGatewayStats { gateway: g.gateway, connections: g.connections, channels: g.channels })
                .collect(),
            partial: s.partial,
        }))
    }

    async fn history(&self, req: Request<ApiHistoryRequest>) -> Result<Response<ApiHistoryResponse>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        if r.limit > 10_000 {
            return Err(to_status(ApiError::InvalidRequest(format!(
                "limit {} must be a whole number from 0 to 10000",
                r.limit
            ))));
        }
        let since = r.since.map(|p| (p.epoch, p.offset));
        if since.as_ref().is_some_and(|s| s.0.is_empty()) {
            return Err(to_status(ApiError::InvalidRequest("since.epoch is empty".to_owned())));
        }
        let h = self.state.commands.history(r.channel, since, Some(r.limit)).await.map_err(to_status)?;
        Ok(Response::new(ApiHistoryResponse {
            epoch: h.epoch,
            offset: h.offset,
            recovered: h.recovered.unwrap_or(true),
            messages: h
                .messages
                .into_iter()
                .map(|m| ApiHistoryMessage { offset: m.offset, data_json: m.data.get().to_owned() })
                .collect(),
        }))
    }

    type PublishStreamStream = ReceiverStream<Result<ApiStreamResult, Status>>;

    /// Items are started in the order they arrive (one channel's publishes
    /// keep their order) and answered as they complete, by id.
    async fn publish_stream(
        &self,
        req: Request<Streaming<ApiStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let peer = req.remote_addr().map(|a| a.ip());
        // The key once for the stream; the rate limit per item.
        self.state.access.check(header, None, Scope::Publish, Transport::Grpc).map_err(ApiError::into_status)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut running = FuturesUnordered::new();
            let mut reading = true;
            while reading || !running.is_empty() {
                tokio::select! {
                    item = inbound.message(), if reading && running.len() < STREAM_IN_FLIGHT => match item {
                        Ok(Some(item)) => running.push(Self::stream_item(&state, peer, item)),
                        Ok(None) | Err(_) => reading = false,
                    },
                    Some(result) = running.next(), if !running.is_empty() => {
                        if tx.send(Ok(result)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
