//! Every way an API request can fail, mapped once to an HTTP status, a
//! gRPC code and the JSON body `{"error":{"code":"…","message":"…"}}`.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not the fields this route takes.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidChannel(String),
    #[error("{0}")]
    UnknownConnection(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// The body fit, but the message is more than the hubs take.
    #[error("{0}")]
    MessageTooLarge(String),
    #[error(
        "unsupported content type {0:?}; send the body as JSON with Content-Type: application/json (curl --json '{{…}}' URL)"
    )]
    UnsupportedMediaType(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit exceeded; retry after {0} s")]
    RateLimited(u64),
    #[error("{0}")]
    Unavailable(String),
    /// A confirmed send its gateway did not confirm in time.
    #[error("{0}")]
    ConfirmTimeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::InvalidRequest(_) | Self::InvalidChannel(_) => StatusCode::BAD_REQUEST,
            Self::UnknownConnection(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } | Self::MessageTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::LimitExceeded(_) | Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConfirmTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidChannel(_) => "invalid_channel",
            Self::UnknownConnection(_) => "unknown_connection",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::PayloadTooLarge { .. } | Self::MessageTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited(_) => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::ConfirmTimeout(_) => "confirm_timeout",
            Self::Internal(_) => "internal",
        }
    }

    /// The gRPC status code for the same failure.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::MalformedJson(_)
            | Self::InvalidRequest(_)
            | Self::InvalidChannel(_)
            | Self::UnsupportedMediaType(_)
            | Self::MethodNotAllowed(_) => Code::InvalidArgument,
            Self::PayloadTooLarge { .. } | Self::MessageTooLarge(_) | Self::LimitExceeded(_) | Self::RateLimited(_) => {
                Code::ResourceExhausted
            }
            Self::UnknownConnection(_) | Self::NotFound(_) => Code::NotFound,
            Self::Unauthorized(_) => Code::Unauthenticated,
            Self::Forbidden(_) => Code::PermissionDenied,
            Self::Unavailable(_) => Code::Unavailable,
            Self::ConfirmTimeout(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The gRPC status: the HTTP API's message, and its error code in the
    /// `pushmesh-error-code` metadata.
    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code(), self.to_string());
        status.metadata_mut().insert("pushmesh-error-code", tonic::metadata::MetadataValue::from_static(self.code()));
        status
    }

    /// Classify a serde error: broken JSON vs. JSON of the wrong shape.
    pub fn from_json(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof => Self::MalformedJson(e.to_string()),
            Category::Data | Category::Io => Self::InvalidRequest(e.to_string()),
        }
    }

    /// `{"error":{"code":…,"message":…}}`
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string() } }
    }

    pub fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        match &self {
            // Hubs come back within seconds (restart, failover).
            Self::Unavailable(_) => {
                resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            }
            Self::RateLimited(secs) => {
                resp.headers_mut().insert("retry-after", HeaderValue::from(*secs));
            }
            Self::Unauthorized(_) => {
                resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

/// The JSON body of an error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
}

use warp::Reply as _;
