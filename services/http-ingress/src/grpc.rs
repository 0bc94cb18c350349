//! The server API as gRPC (`pushmesh.v1.PushApi`): each RPC builds the same
//! body the HTTP route parses, passes the same access check and calls the
//! same `Commands` method, so the two transports cannot drift apart; the
//! typed results map field by field. Errors become gRPC statuses carrying
//! the HTTP API's message, with its error code in `pushmesh-error-code`.

use std::sync::Arc;

use serde_json::value::RawValue;
use tonic::{Request, Response, Status};

use pushmesh_common::proto::push_api_server::PushApi;
use pushmesh_common::proto::{
    ApiBroadcastRequest, ApiClient, ApiDisconnectRequest, ApiDisconnectResponse, ApiEmpty, ApiGatewayStats,
    ApiMembershipRequest, ApiPresenceRequest, ApiPresenceResponse, ApiPublishRequest, ApiPublishResponse,
    ApiSendRequest, ApiStatsRequest, ApiStatsResponse,
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

fn data(json: String) -> Result<Box<RawValue>, Status> {
    RawValue::from_string(json)
        .map_err(|e| to_status(ApiError::InvalidRequest(format!("data_json is not valid JSON: {e}"))))
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
    }
}

#[tonic::async_trait]
impl PushApi for GrpcApi {
    async fn publish(&self, req: Request<ApiPublishRequest>) -> Result<Response<ApiPublishResponse>, Status> {
        self.authorize(&req, Scope::Publish)?;
        let r = req.into_inner();
        let body = PublishBody {
            channel: r.channel,
            data: data(r.data_json)?,
            idempotency_key: opt(r.idempotency_key),
            _op: None,
        };
        let v = self.state.commands.publish(body).await.map_err(to_status)?;
        Ok(Response::new(published(v)))
    }

    async fn broadcast(&self, req: Request<ApiBroadcastRequest>) -> Result<Response<ApiPublishResponse>, Status> {
        self.authorize(&req, Scope::Publish)?;
        let r = req.into_inner();
        let body = BroadcastBody { data: data(r.data_json)?, exclude: r.exclude, _op: None };
        let v = self.state.commands.broadcast(body).await.map_err(to_status)?;
        Ok(Response::new(published(v)))
    }

    async fn send(&self, req: Request<ApiSendRequest>) -> Result<Response<ApiPublishResponse>, Status> {
        self.authorize(&req, Scope::Publish)?;
        let r = req.into_inner();
        let body = SendBody {
            connection: opt(r.connection),
            user: opt(r.user),
            data: data(r.data_json)?,
            exclude: r.exclude,
            _op: None,
        };
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
}
