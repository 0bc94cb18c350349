//! The client WebSocket protocol (JSON text frames), specified in
//! docs/protocol.md: the commands a client sends, and every frame the
//! gateway builds for it — message frames (built once per delivery by the
//! fan-out and shared by every recipient), replies, the welcome, and the
//! WebSocket framing itself.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};

use pushmesh_common::proto::Delivery;

/// Close codes the gateway uses (RFC 6455 and pushmesh's own 4000–4999).
pub mod close {
    /// A normal close (the echo of a client's close without a code).
    pub const NORMAL: u16 = 1000;
    /// The client sent a binary frame; the protocol is JSON text.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than the configured limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The gateway is shutting down: reconnect (to another gateway).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The connection's outbound queue overflowed (slow consumer).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Policy violation: the client sent commands faster than allowed.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Any other protocol violation by the client.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Closed through the server API (`POST /disconnect`), unless the call
    /// chose another code in 4000–4999.
    pub const DISCONNECTED: u16 = 4000;
    /// Authentication required, or the token is invalid (bad signature,
    /// malformed, algorithm not allowed, missing `exp`).
    pub const UNAUTHORIZED: u16 = 4001;
    /// The token's `exp` has passed (at connect, or on the live connection
    /// with no `refresh` in time): get a fresh token and reconnect.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The user already has the maximum number of connections here.
    pub const TOO_MANY_CONNECTIONS: u16 = 4003;
    /// The client answered no ping for two ping intervals.
    pub const IDLE_TIMEOUT: u16 = 4004;
    /// The connect proxy could not decide (the backend timed out, failed or
    /// is unavailable): reconnect later.
    pub const BACKEND_FAILED: u16 = 4005;
}

/// A close reason must fit in a control frame (123 bytes of UTF-8).
pub fn close_reason(reason: &str) -> String {
    pushmesh_common::ids::truncate(reason, 120)
}

/// A text frame as it goes on the wire (header and payload). Server frames
/// are unmasked, so these bytes are the same for every client: a delivery
/// is encoded once for all its recipients.
pub fn wire_text(text: impl Into<Bytes>) -> Bytes {
    wire(WsFrame::message(text, OpCode::Data(OpData::Text), true))
}

/// A close frame with `code` and `reason` (cut to fit a control frame).
pub fn wire_close(code: u16, reason: &str) -> Bytes {
    wire(WsFrame::close(Some(CloseFrame { code: CloseCode::from(code), reason: close_reason(reason).into() })))
}

/// The heartbeat's ping (empty payload).
pub fn wire_ping() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

fn wire(frame: WsFrame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).expect("formatting into a Vec cannot fail");
    out.into()
}

/// `{"type":"message","channel":"…","data":…,"epoch":"…","offset":N}`; the
/// data is already JSON text (validated by the ingress), copied in once.
pub fn json_frame(d: &Delivery, data: &str) -> Utf8Bytes {
    let mut s = String::with_capacity(data.len() + d.channel.len() + d.epoch.len() + 64);
    s.push_str(r#"{"type":"message""#);
    if !d.channel.is_empty() {
        // Channel names are restricted to characters that need no escaping.
        s.push_str(r#","channel":""#);
        s.push_str(&d.channel);
        s.push('"');
    }
    s.push_str(r#","data":"#);
    s.push_str(data);
    if !d.epoch.is_empty() {
        // Epochs are hex digits: no escaping needed either.
        s.push_str(r#","epoch":""#);
        s.push_str(&d.epoch);
        s.push_str(r#"","offset":"#);
        s.push_str(itoa::Buffer::new().format(d.offset));
    }
    s.push('}');
    s.into()
}

/// A channel event: `{"type":"join"|"leave","channel":"…","user":…,"connection":"…"}`;
/// `data` is the event's `{"user","connection"}` (made by a gateway).
pub fn event_frame(d: &Delivery, data: &str) -> Utf8Bytes {
    let mut v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    let mut frame = serde_json::Map::new();
    frame.insert("type".into(), json!(d.event));
    frame.insert("channel".into(), json!(d.channel));
    frame.insert("user".into(), v.get_mut("user").map(serde_json::Value::take).unwrap_or_default());
    frame.insert("connection".into(), v.get_mut("connection").map(serde_json::Value::take).unwrap_or_default());
    serde_json::Value::Object(frame).to_string().into()
}

/// The published content alone, as the seed sent it: a JSON string is
/// unquoted; any other JSON value goes as its text (sharing the buffer).
pub fn raw_frame(d: &Delivery, data: &str) -> Utf8Bytes {
    if data.starts_with('"')
        && let Ok(s) = serde_json::from_str::<String>(data)
    {
        return s.into();
    }
    Utf8Bytes::try_from(d.data.clone()).unwrap_or_else(|_| data.to_owned().into())
}

/// The (channel, epoch, offset) of a message frame built by `json_frame`,
/// read from its fixed layout without parsing the data in between.
pub fn message_position(frame: &str) -> Option<(&str, &str, u64)> {
    let rest = frame.strip_prefix(r#"{"type":"message","channel":""#)?;
    let channel = &rest[..rest.find('"')?];
    let tail = &frame[frame.rfind(r#","epoch":""#)? + r#","epoch":""#.len()..];
    let (epoch, tail) = tail.split_once(r#"","offset":"#)?;
    let offset = tail.strip_suffix('}')?.parse().ok()?;
    Some((channel, epoch, offset))
}

/// The `type` of a (control) frame, e.g. `welcome` or `reply`.
pub fn frame_type(frame: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<Typed>(frame).ok().map(|t| t.kind)
}

/// A delivery's frame in the connection's format.
pub fn message_frame(d: &Delivery, data: &str, raw: bool) -> Utf8Bytes {
    if !d.event.is_empty() {
        event_frame(d, data)
    } else if raw {
        raw_frame(d, data)
    } else {
        json_frame(d, data)
    }
}

/// A command from the client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Echoed in the reply; commands without one get no success reply.
    pub id: Option<u64>,
    pub op: String,
    pub channel: Option<String>,
    /// `subscribe` only: the last stream position the client saw; the
    /// messages after it are recovered from the hub's history.
    pub since: Option<Since>,
    /// `auth` and `refresh`: the JWT.
    pub token: Option<String>,
    /// `publish` and `rpc`: any JSON value.
    pub data: Option<Box<serde_json::value::RawValue>>,
    /// `rpc`: the backend method's name.
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

/// What the gateway answers a command with.
#[derive(Debug)]
pub enum Reply {
    Ok,
    /// A subscribe that carried `since`: whether recovery happened, and the
    /// channel's current stream position when known.
    Subscribed {
        recovered: bool,
        epoch: Option<String>,
        offset: u64,
    },
    /// A client publish a hub accepted, at this stream position.
    Published {
        epoch: String,
        offset: u64,
    },
    /// An rpc's answer.
    Data(serde_json::Value),
    /// The reply was queued already (with recovered messages behind it).
    AlreadySent,
    Error {
        code: &'static str,
        message: String,
    },
}

impl Reply {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }
}

pub fn reply_frame(id: Option<u64>, reply: &Reply) -> Utf8Bytes {
    let v = match reply {
        Reply::Ok => json!({ "type": "reply", "id": id, "ok": true }),
        Reply::Subscribed { recovered, epoch, offset } => {
            let mut v = json!({ "type": "reply", "id": id, "ok": true, "recovered": recovered });
            if let Some(e) = epoch {
                v["epoch"] = json!(e);
                v["offset"] = json!(offset);
            }
            v
        }
        Reply::Published { epoch, offset } => {
            json!({ "type": "reply", "id": id, "ok": true, "epoch": epoch, "offset": offset })
        }
        Reply::Data(data) => json!({ "type": "reply", "id": id, "ok": true, "data": data }),
        Reply::AlreadySent => unreachable!("an already-sent reply is never encoded again"),
        Reply::Error { code, message } => {
            json!({ "type": "reply", "id": id, "error": { "code": code, "message": message } })
        }
    };
    v.to_string().into()
}

/// The first frame a client gets. JSON clients get
/// `{"type":"welcome","connection":"<gateway>:<n>","gateway":"<gateway>"}`;
/// `?format=raw` clients get the seed's own line, `worker id:<gateway>
/// connection id:<n> connected`, whose two ids are what the seed's publish
/// form takes (`to_worker_id`, `to_connection_id`).
pub fn welcome_frame(
    id: &pushmesh_common::ids::ConnectionId,
    user: Option<&pushmesh_common::ids::UserId>,
    raw: bool,
) -> Utf8Bytes {
    if raw {
        return format!("worker id:{} connection id:{} connected", id.gateway(), id.seq()).into();
    }
    let mut v = json!({ "type": "welcome", "connection": id.to_string(), "gateway": id.gateway().as_str() });
    if let Some(u) = user {
        v["user"] = json!(u.as_str());
    }
    v.to_string().into()
}

/// Pushed to a client when the server API subscribed or unsubscribed it.
pub fn membership_frame(subscribed: bool, channel: &str) -> Utf8Bytes {
    let kind = if subscribed { "subscribed" } else { "unsubscribed" };
    json!({ "type": kind, "channel": channel }).to_string().into()
}

/// Best effort at the `id` of a command that did not parse, so the error
/// reply can still be matched to it.
pub fn salvage_id(text: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(text).ok()?.get("id")?.as_u64()
}

#[cfg(test)]
mod frames {
    use pushmesh_common::ids::{ConnectionId, GatewayId};

    #[test]
    fn a_message_frames_position_is_read_back_whatever_its_data() {
        let d = pushmesh_common::proto::Delivery {
            channel: "news".into(),
            epoch: "00ff".into(),
            offset: 42,
            ..Default::default()
        };
        let data = r#"{"x":1,"epoch":"zz","offset":9}"#;
        let frame = super::json_frame(&d, data);
        assert_eq!(super::message_position(frame.as_str()), Some(("news", "00ff", 42)));
        let broadcast = super::json_frame(&pushmesh_common::proto::Delivery::default(), "1");
        assert_eq!(super::message_position(broadcast.as_str()), None);
        assert_eq!(super::frame_type(r#"{"id":1,"ok":true,"type":"reply"}"#).as_deref(), Some("reply"));
    }

    #[test]
    fn raw_clients_get_the_seed_welcome_line() {
        let id = ConnectionId::new(GatewayId::new("gw-local").unwrap(), 7);
        assert_eq!(super::welcome_frame(&id, None, true).as_str(), "worker id:gw-local connection id:7 connected");
        let json: serde_json::Value = serde_json::from_str(super::welcome_frame(&id, None, false).as_str()).unwrap();
        assert_eq!(json, serde_json::json!({"type": "welcome", "connection": "gw-local:7", "gateway": "gw-local"}));
    }
}

#[cfg(test)]
mod wire {
    #[test]
    fn frames_are_encoded_unmasked() {
        assert_eq!(&super::wire_text("hi")[..], b"\x81\x02hi");
        let long = super::wire_text("x".repeat(300));
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
        assert_eq!(&super::wire_close(1013, "slow")[..], b"\x88\x06\x03\xf5slow");
        assert_eq!(&super::wire_ping()[..], b"\x89\x00");
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests standing in for fuzzing the client command parser.
    use proptest::prelude::*;

    use super::{Command, salvage_id};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let _ = serde_json::from_str::<Command>(&s);
            let _ = salvage_id(&s);
        }

        #[test]
        fn json_shaped_commands_never_panic(
            id in proptest::option::of(any::<i64>()),
            op in "[a-z]{0,12}",
            channel in proptest::option::of("\\PC{0,40}"),
            offset in any::<u64>(),
        ) {
            let v = serde_json::json!({ "id": id, "op": op, "channel": channel, "since": { "epoch": "e", "offset": offset } });
            let _ = serde_json::from_str::<Command>(&v.to_string());
        }

        #[test]
        fn globs_never_panic(p in "[a-z*:]{0,20}", t in "[a-z:]{0,40}") {
            let _ = crate::auth::glob_match(&p, &t);
            prop_assert!(crate::auth::glob_match("*", &t));
        }
    }
}
