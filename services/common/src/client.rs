//! The client WebSocket protocol's frames as types, for Rust clients: the
//! `pushmesh` CLI, the end-to-end tests' client and the benchmark's
//! workers build their commands and read the server's frames with these,
//! so a renamed field breaks the build instead of a client
//! (docs/protocol.md is the contract; the gateway parses commands
//! strictly on its side).
//!
//! Server frames this version does not know come out as
//! [`ServerFrame::Other`], so a newer gateway does not break an older
//! client.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A stream position: the last message seen, sent back as `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

/// A command from the client (`{"id":1,"op":"subscribe",…}`). Commands with
/// an `id` get a [`ServerFrame::Reply`] carrying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientOp {
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: String,
        /// Recover what came after this position (`recovered` in the reply).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
    },
    Unsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: String,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The JWT, when it was not in the URL.
    Auth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        token: String,
    },
    /// A new JWT for the live connection, before the old one expires.
    Refresh {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        token: String,
    },
    /// Publish to a channel whose namespace allows client publish
    /// (docs/proxy.md); the reply carries the message's position.
    Publish {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: String,
        data: Value,
    },
    /// Call the application's backend; its answer is the reply's `data`.
    Rpc {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        method: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
}

impl ClientOp {
    pub fn subscribe(id: u64, channel: impl Into<String>, since: Option<Since>) -> Self {
        ClientOp::Subscribe { id: Some(id), channel: channel.into(), since }
    }

    pub fn publish(id: u64, channel: impl Into<String>, data: Value) -> Self {
        ClientOp::Publish { id: Some(id), channel: channel.into(), data }
    }

    pub fn rpc(id: u64, method: impl Into<String>, data: Value) -> Self {
        ClientOp::Rpc { id: Some(id), method: method.into(), data: Some(data) }
    }

    /// The JSON text frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a command always serialises")
    }
}

/// `{"code","message"}` of a refused command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// A frame from the server (`{"type":…}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first frame: this connection's id and its gateway's.
    Welcome {
        connection: String,
        gateway: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// The answer to a command that had an `id`.
    Reply {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ReplyError>,
        /// Subscribe with `since`: whether the missed messages follow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Subscribe: where the channel's stream is now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// A delivery. Channel messages carry their channel and stream
    /// position; broadcasts and direct sends carry neither.
    Message {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        data: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Joined or left a channel by a server-side command.
    Subscribed {
        channel: String,
    },
    Unsubscribed {
        channel: String,
    },
    /// A frame type this version does not know.
    #[serde(other)]
    Other,
}

impl ServerFrame {
    /// Parse a text frame; `None` when it is not a JSON object with a
    /// `type` (a `?format=raw` delivery, say).
    pub fn parse(text: &str) -> Option<ServerFrame> {
        serde_json::from_str(text).ok()
    }

    /// The channel message's position, if it is one.
    pub fn position(&self) -> Option<(&str, Since)> {
        match self {
            ServerFrame::Message { channel: Some(ch), epoch: Some(epoch), offset: Some(offset), .. } => {
                Some((ch, Since { epoch: epoch.clone(), offset: *offset }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn commands_are_the_documented_json() {
        let since = Some(Since { epoch: "e1".into(), offset: 41 });
        let cmd: Value = serde_json::from_str(&ClientOp::subscribe(1, "news", since).to_text()).unwrap();
        assert_eq!(cmd, json!({"op": "subscribe", "id": 1, "channel": "news", "since": {"epoch": "e1", "offset": 41}}));
        let ping: Value = serde_json::from_str(&ClientOp::Ping { id: None }.to_text()).unwrap();
        assert_eq!(ping, json!({"op": "ping"}));
    }

    #[test]
    fn publish_and_rpc_are_written_as_the_protocol_says() {
        let p: Value =
            serde_json::from_str(&ClientOp::publish(6, "chat:room", json!({"text": "hi"})).to_text()).unwrap();
        assert_eq!(p, json!({"id": 6, "op": "publish", "channel": "chat:room", "data": {"text": "hi"}}));
        let r: Value = serde_json::from_str(&ClientOp::rpc(7, "getUser", json!({"id": 42})).to_text()).unwrap();
        assert_eq!(r, json!({"id": 7, "op": "rpc", "method": "getUser", "data": {"id": 42}}));
    }

    #[test]
    fn server_frames_parse_and_unknown_ones_do_not_fail() {
        let m = ServerFrame::parse(r#"{"type":"message","channel":"news","data":{"a":1},"epoch":"e","offset":42}"#);
        assert_eq!(m.as_ref().and_then(|m| m.position()), Some(("news", Since { epoch: "e".into(), offset: 42 })));
        let r = ServerFrame::parse(r#"{"type":"reply","id":3,"error":{"code":"permission_denied","message":"no"}}"#);
        assert!(matches!(r, Some(ServerFrame::Reply { id: 3, error: Some(ReplyError { .. }), .. })), "{r:?}");
        assert_eq!(ServerFrame::parse(r#"{"type":"join","channel":"x","user":"u"}"#), Some(ServerFrame::Other));
        assert_eq!(ServerFrame::parse("hello"), None);
    }
}
