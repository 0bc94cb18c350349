//! Names that travel through the system, validated at construction so an
//! invalid one cannot get past the edge where it arrived.
//!
//! A connection id is `<gateway id>:<sequence>`: globally unique as long as
//! gateway ids are (pod names are), and it says which gateway owns the
//! connection, so a direct send is routed on that gateway's topic without
//! any lookup table (the seed's "worker id + connection id", in one string).

use std::fmt;

use thiserror::Error;

/// Largest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Largest gateway id, in bytes (a Kubernetes pod name fits).
pub const MAX_GATEWAY_ID_LEN: usize = 253;

/// Why a name was refused. The message says what was wrong and what is allowed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("channel name is empty; it must be 1 to 255 bytes")]
    EmptyChannel,
    #[error("channel name is {0} bytes long; the limit is 255 bytes")]
    ChannelTooLong(usize),
    #[error("channel name contains {0:?}; allowed characters are A-Z a-z 0-9 and _ - : . @ #")]
    ChannelChar(char),
    #[error("gateway id is empty")]
    EmptyGateway,
    #[error("gateway id is {0} bytes long; the limit is 253 bytes")]
    GatewayTooLong(usize),
    #[error("gateway id contains {0:?}; allowed characters are A-Z a-z 0-9 and _ - .")]
    GatewayChar(char),
    #[error("user id is empty; it must be 1 to 255 bytes")]
    EmptyUser,
    #[error("user id is {0} bytes long; the limit is 255 bytes")]
    UserTooLong(usize),
    #[error("user id contains {0:?}; allowed characters are A-Z a-z 0-9 and _ - : . @ #")]
    UserChar(char),
    #[error("connection id {0:?} is malformed; expected <gateway>:<number> as sent in the welcome frame")]
    Connection(String),
    #[error("topic {0:?} is malformed; expected b, c:<channel>, u:<user> or g:<gateway>")]
    Topic(String),
}

fn channel_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '@' | '#')
}

fn gateway_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// The first rule a name breaks: empty, too long, or a character outside
/// the allowed set. Each name type maps it to its own error.
enum Broken {
    Empty,
    TooLong(usize),
    Char(char),
}

fn check(name: &str, max: usize, allowed: fn(char) -> bool) -> Result<(), Broken> {
    if name.is_empty() {
        return Err(Broken::Empty);
    }
    if name.len() > max {
        return Err(Broken::TooLong(name.len()));
    }
    match name.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(Broken::Char(c)),
        None => Ok(()),
    }
}

/// A channel name: 1–255 bytes of `A–Z a–z 0–9 _ - : . @ #`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(String);

impl Channel {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check(&name, MAX_CHANNEL_LEN, channel_char_ok).map_err(|b| match b {
            Broken::Empty => NameError::EmptyChannel,
            Broken::TooLong(n) => NameError::ChannelTooLong(n),
            Broken::Char(c) => NameError::ChannelChar(c),
        })?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hub topic that carries this channel.
    pub fn topic(&self) -> String {
        format!("{}{}", topic::CHANNEL_PREFIX, self.0)
    }
}

/// Looked up by name in maps keyed by `Channel` (the derived `Hash` is the
/// name's own, so this is sound).
impl std::borrow::Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user id (a JWT's `sub`): the same characters as a channel name, so it
/// can stand in a topic and a URL unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        check(&id, MAX_CHANNEL_LEN, channel_char_ok).map_err(|b| match b {
            Broken::Empty => NameError::EmptyUser,
            Broken::TooLong(n) => NameError::UserTooLong(n),
            Broken::Char(c) => NameError::UserChar(c),
        })?;
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hub topic that carries sends to this user.
    pub fn topic(&self) -> String {
        format!("{}{}", topic::USER_PREFIX, self.0)
    }
}

impl std::borrow::Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A gateway's id: the owner part of its connection ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayId(String);

impl GatewayId {
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        check(&id, MAX_GATEWAY_ID_LEN, gateway_char_ok).map_err(|b| match b {
            Broken::Empty => NameError::EmptyGateway,
            Broken::TooLong(n) => NameError::GatewayTooLong(n),
            Broken::Char(c) => NameError::GatewayChar(c),
        })?;
        Ok(Self(id))
    }

    /// `<prefix>-<8 random hex digits>`: unique enough for local runs, where
    /// no pod name is there to use.
    pub fn random(prefix: &str) -> Self {
        Self(format!("{prefix}-{:08x}", rand::random::<u32>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The gateway's own hub topic: direct sends to its connections.
    pub fn topic(&self) -> String {
        format!("{}{}", topic::GATEWAY_PREFIX, self.0)
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<gateway>:<seq>`; parsed, never trusted as a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    gateway: GatewayId,
    seq: u64,
}

impl ConnectionId {
    pub fn new(gateway: GatewayId, seq: u64) -> Self {
        Self { gateway, seq }
    }

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::Connection(truncate(s, 80));
        let (gw, seq) = s.rsplit_once(':').ok_or_else(bad)?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        let gateway = GatewayId::new(gw).map_err(|_| bad())?;
        Ok(Self { gateway, seq })
    }

    pub fn gateway(&self) -> &GatewayId {
        &self.gateway
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.gateway, self.seq)
    }
}

/// Cut a client-supplied string for an error message, so a 1 MiB "name"
/// does not come back in full.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What a hub routes on: the target of a publish, and what a gateway
/// subscribes to. Parsed (and its names validated) once where it enters a
/// service; on the wire it is a short string (`b`, `c:<channel>`,
/// `u:<user>`, `g:<gateway>`), see `topic`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Every gateway subscribes to it; broadcasts travel on it.
    Broadcast,
    Channel(Channel),
    User(UserId),
    /// A gateway's own topic: direct sends to one of its connections.
    Gateway(GatewayId),
}

impl Topic {
    /// Parse and validate a wire topic.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match TopicRef::of(s) {
            TopicRef::Broadcast => Ok(Self::Broadcast),
            TopicRef::Channel(c) => Channel::new(c).map(Self::Channel),
            TopicRef::User(u) => UserId::new(u).map(Self::User),
            TopicRef::Gateway(g) => GatewayId::new(g).map(Self::Gateway),
            TopicRef::Unknown(t) => Err(NameError::Topic(truncate(t, 80))),
        }
    }

    /// The topic as it travels between the services.
    pub fn wire(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broadcast => f.write_str(topic::BROADCAST),
            Self::Channel(c) => write!(f, "{}{c}", topic::CHANNEL_PREFIX),
            Self::User(u) => write!(f, "{}{u}", topic::USER_PREFIX),
            Self::Gateway(g) => write!(f, "{}{g}", topic::GATEWAY_PREFIX),
        }
    }
}

/// A wire topic seen without copying or validating it: for the per-delivery
/// path, where the topic was validated by whoever built the delivery and
/// is only used to look up local recipients (an unknown name finds none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRef<'a> {
    Broadcast,
    Channel(&'a str),
    User(&'a str),
    Gateway(&'a str),
    Unknown(&'a str),
}

impl<'a> TopicRef<'a> {
    pub fn of(s: &'a str) -> Self {
        if s == topic::BROADCAST {
            Self::Broadcast
        } else if let Some(c) = s.strip_prefix(topic::CHANNEL_PREFIX) {
            Self::Channel(c)
        } else if let Some(u) = s.strip_prefix(topic::USER_PREFIX) {
            Self::User(u)
        } else if let Some(g) = s.strip_prefix(topic::GATEWAY_PREFIX) {
            Self::Gateway(g)
        } else {
            Self::Unknown(s)
        }
    }
}

/// Hub topic names on the wire. Services build and read them through
/// `Topic` and `TopicRef`, never by hand.
pub mod topic {
    /// Every gateway subscribes to it; broadcasts travel on it.
    pub const BROADCAST: &str = "b";
    pub const CHANNEL_PREFIX: &str = "c:";
    pub const GATEWAY_PREFIX: &str = "g:";
    pub const USER_PREFIX: &str = "u:";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rules() {
        assert!(Channel::new("news").is_ok());
        assert!(Channel::new("a-b_c:d.e@f#g").is_ok());
        assert_eq!(Channel::new(""), Err(NameError::EmptyChannel));
        assert_eq!(Channel::new("x".repeat(256)), Err(NameError::ChannelTooLong(256)));
        assert!(Channel::new("x".repeat(255)).is_ok());
        assert_eq!(Channel::new("a b"), Err(NameError::ChannelChar(' ')));
        assert_eq!(Channel::new("né"), Err(NameError::ChannelChar('é')));
    }

    #[test]
    fn connection_ids_round_trip() {
        let gw = GatewayId::new("ws-gateway-7d9f.x").unwrap();
        let id = ConnectionId::new(gw.clone(), 42);
        let s = id.to_string();
        assert_eq!(s, "ws-gateway-7d9f.x:42");
        assert_eq!(ConnectionId::parse(&s).unwrap(), id);
        assert!(ConnectionId::parse("nogateway").is_err());
        assert!(ConnectionId::parse("gw:notanumber").is_err());
        assert!(ConnectionId::parse(":1").is_err());
        assert!(ConnectionId::parse("g w:1").is_err());
    }

    #[test]
    fn topics_round_trip_and_are_validated() {
        for wire in ["b", "c:news", "u:alice", "g:gw-1"] {
            assert_eq!(Topic::parse(wire).unwrap().wire(), wire);
        }
        assert_eq!(Topic::parse("c:news").unwrap(), Topic::Channel(Channel::new("news").unwrap()));
        assert!(matches!(Topic::parse("c:a b"), Err(NameError::ChannelChar(' '))));
        assert!(matches!(Topic::parse("x:1"), Err(NameError::Topic(_))));
        assert_eq!(TopicRef::of("c:news"), TopicRef::Channel("news"));
        assert_eq!(TopicRef::of("g:gw"), TopicRef::Gateway("gw"));
        assert_eq!(TopicRef::of("zz"), TopicRef::Unknown("zz"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
