//! The server API as gRPC (`pushmesh.v1.PushApi`): each RPC builds the same
//! body the HTTP route parses and calls the same `Commands` method, so the
//! two transports cannot drift apart. Errors become gRPC statuses carrying
//! the HTTP API's message, with its error code in `pushmesh-error-code`.

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use tonic::{Request, Response, Status};

use pushmesh_common::proto::push_api_server::PushApi;
use pushmesh_common::proto::{
    ApiBroadcastRequest, ApiClient, ApiDisconnectRequest, ApiDisconnectResponse, ApiEmpty, ApiGatewayStats,
    ApiHistoryMessage, ApiHistoryRequest, ApiHistoryResponse, ApiMembershipRequest, ApiPresenceRequest,
    ApiPresenceResponse, ApiPublishRequest, ApiPublishResponse, ApiSendRequest, ApiStatsRequest, ApiStatsResponse,
};

use crate::commands::{BroadcastBody, DisconnectBody, MembershipBody, PublishBody, SendBody};
use crate::error::ApiError;
use crate::keys::{KeyError, Scope};
use crate::routes::State;

pub struct GrpcApi {
    state: Arc<State>,
}

impl GrpcApi {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    fn authorize<T>(&self, req: &Request<T>, needs: Scope) -> Result<(), Status> {
        let Some(keys) = &self.state.keys else { return Ok(()) };
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        keys.check(header, needs).map(|_| ()).map_err(|e| match e {
            KeyError::Missing => to_status(ApiError::Unauthorized(
                "missing API key: send the metadata authorization: Bearer <key>".to_owned(),
            )),
            KeyError::Invalid => to_status(ApiError::Unauthorized("invalid API key".to_owned())),
            KeyError::Forbidden => to_status(ApiError::Forbidden("this RPC needs an admin key".to_owned())),
        })
    }
}

fn to_status(e: ApiError) -> Status {
    let code = match e.status().as_u16() {
        400 | 413 | 415 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    if let Ok(v) = e.code().parse() {
        status.metadata_mut().insert("pushmesh-error-code", v);
    }
    status
}

fn data(json: String) -> Result<Box<RawValue>, Status> {
    RawValue::from_string(json)
        .map_err(|e| to_status(ApiError::InvalidRequest(format!("data_json is not valid JSON: {e}"))))
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn published(v: Value) -> ApiPublishResponse {
    ApiPublishResponse {
        gateways: v["gateways"].as_u64().unwrap_or(0) as u32,
        epoch: v["epoch"].as_str().unwrap_or_default().to_owned(),
        offset: v["offset"].as_u64().unwrap_or(0),
        duplicate: v["duplicate"].as_bool().unwrap_or(false),
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
        let v = self.state.commands.disconnect(body).await.map_err(to_status)?;
        Ok(Response::new(ApiDisconnectResponse {
            disconnected: v["disconnected"].as_u64().unwrap_or(0) as u32,
            partial: v["partial"].as_bool().unwrap_or(false),
        }))
    }

    async fn presence(&self, req: Request<ApiPresenceRequest>) -> Result<Response<ApiPresenceResponse>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let r = req.into_inner();
        let limit = (r.limit != 0).then_some(r.limit.min(10_000));
        let v = self.state.commands.presence(r.channel, limit).await.map_err(to_status)?;
        let clients = v["clients"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| ApiClient {
                        connection: c["connection"].as_str().unwrap_or_default().to_owned(),
                        user: c["user"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(ApiPresenceResponse {
            connections: v["connections"].as_u64().unwrap_or(0),
            users: v["users"].as_u64().unwrap_or(0),
            clients,
            partial: v["partial"].as_bool().unwrap_or(false),
        }))
    }

    async fn stats(&self, req: Request<ApiStatsRequest>) -> Result<Response<ApiStatsResponse>, Status> {
        self.authorize(&req, Scope::Admin)?;
        let v = self.state.commands.stats().await.map_err(to_status)?;
        let gateways = v["gateways"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|g| ApiGatewayStats {
                        gateway: g["gateway"].as_str().unwrap_or_default().to_owned(),
                        connections: g["connections"].as_u64().unwrap_or(0),
                        channels: g["channels"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(ApiStatsResponse {
            connections: v["connections"].as_u64().unwrap_or(0),
            channels: v["channels"].as_u64().unwrap_or(0),
            gateways,
            partial: v["partial"].as_bool().unwrap_or(false),
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
        let with_since = since.is_some();
        let v = self.state.commands.history(r.channel, since, Some(r.limit)).await.map_err(to_status)?;
        let messages = v["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| ApiHistoryMessage {
                        offset: m["offset"].as_u64().unwrap_or(0),
                        data_json: m["data"].to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(ApiHistoryResponse {
            epoch: v["epoch"].as_str().unwrap_or_default().to_owned(),
            offset: v["offset"].as_u64().unwrap_or(0),
            recovered: !with_since || v["recovered"].as_bool().unwrap_or(false),
            messages,
        }))
    }
}
