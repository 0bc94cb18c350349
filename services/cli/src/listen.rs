//! `pushmesh listen`: a real WebSocket client. It connects (retrying while
//! the gateway is not up yet, with a progress line), subscribes, and then
//! runs one loop over three things: frames from the gateway, the deadline
//! (`--timeout`), and Ctrl-C. Deliveries go to stdout one per line; status
//! goes to stderr, so `pushmesh listen | jq` sees only messages.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use pushmesh_common::client::{ClientOp, ServerFrame, Since};

use crate::cli::{ListenArgs, Output};

/// The channel column of a delivery that has no channel: a broadcast, a
/// send to this connection or a send to its user.
const NO_CHANNEL: &str = "(broadcast or direct)";
use crate::duration::human;
use crate::failure::{Exit, Failure, Result};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A stream position: what a message carries as `epoch`/`offset` and a
/// subscribe sends back as `since`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

impl Position {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Failure::usage(format!("--since {s:?} is not a position"))
                .hint("write EPOCH:OFFSET, the \"epoch\" and \"offset\" of the last message you saw (listen --output json shows them)")
        };
        let (epoch, offset) = s.rsplit_once(':').ok_or_else(bad)?;
        if epoch.is_empty() {
            return Err(bad());
        }
        Ok(Self { epoch: epoch.to_owned(), offset: offset.parse().map_err(|_| bad())? })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// `ws://host:port/ws?format=raw&token=…` from what the user typed.
pub fn ws_url(given: &str, raw: bool, token: Option<&str>) -> Result<reqwest::Url> {
    let with_scheme = if given.contains("://") { given.to_owned() } else { format!("ws://{given}") };
    let mut url = reqwest::Url::parse(&with_scheme).map_err(|e| {
        Failure::usage(format!("--gateway {given:?} is not a URL ({e})")).hint("write it like ws://127.0.0.1:8080/ws")
    })?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(Failure::usage(format!("--gateway has scheme {other:?}; expected ws:// (or http://)")));
        }
    };
    url.set_scheme(scheme).expect("ws and wss are valid schemes");
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/ws");
    }
    {
        let mut q = url.query_pairs_mut();
        if raw {
            q.append_pair("format", "raw");
        }
        if let Some(t) = token {
            q.append_pair("token", t);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

/// What the listener prints on stderr.
struct Status {
    quiet: bool,
}

impl Status {
    fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", line.as_ref());
        }
    }
}

pub async fn run(args: ListenArgs) -> Result<()> {
    let since = match &args.since {
        Some(s) if args.channel.len() != 1 => {
            return Err(Failure::usage(format!(
                "--since {s} needs exactly one --channel (got {})",
                args.channel.len()
            ))
            .hint("a position belongs to one channel's stream: run one listener per channel to recover"));
        }
        Some(s) => Some(Position::parse(s)?),
        None => None,
    };
    if args.count == Some(0) {
        return Err(Failure::usage("--count must be at least 1"));
    }
    let url = ws_url(&args.url, args.raw, args.token.as_deref())?;
    let shown = redacted(&url);
    let status = Status { quiet: args.quiet };
    let started = Instant::now();
    let deadline = args.timeout.map(|t| started + t);

    let mut ws = connect(&url, &shown, args.connect_timeout, deadline, &status).await?;
    let mut session = Session {
        args: &args,
        status: &status,
        received: 0,
        pending: HashMap::new(),
        positions: HashMap::new(),
        welcomed: false,
    };

    for (id, ch) in (1u64..).zip(&args.channel) {
        let since = since.as_ref().map(|p| Since { epoch: p.epoch.clone(), offset: p.offset });
        let cmd = ClientOp::subscribe(id, ch.clone(), since);
        ws.send(Message::Text(cmd.to_text().into())).await.map_err(|e| {
            Failure::new(Exit::Closed, format!("the connection to {shown} broke while subscribing: {e}"))
        })?;
        session.pending.insert(id, ch.clone());
    }

    let interactive = std::io::stderr().is_terminal() && !args.quiet;
    let mut progress = tokio::time::interval_at(Instant::now() + Duration::from_secs(5), Duration::from_secs(5));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365)));
    tokio::pin!(sleep);

    let outcome = loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                close(&mut ws).await;
                break Ok(());
            }
            () = &mut sleep, if deadline.is_some() => {
                close(&mut ws).await;
                let limit = human(args.timeout.unwrap_or_default());
                break match args.count {
                    Some(n) if session.received < n => Err(Failure::new(
                        Exit::Timeout,
                        format!("timed out after {limit}: {} of {n} message(s) arrived", session.received),
                    ).hint("is anything publishing to the channel? (pushmesh publish --channel NAME …); or allow longer with --timeout")),
                    _ => Ok(()),
                };
            }
            _ = progress.tick(), if interactive && args.count.is_some() => {
                let left = deadline.map(|d| format!(", {} left", human(d.saturating_duration_since(Instant::now())))).unwrap_or_default();
                eprintln!("waiting: {}/{} message(s){left}", session.received, args.count.unwrap_or(0));
            }
            frame = ws.next() => {
                match session.on_frame(frame, &shown) {
                    Ok(true) => {
                        close(&mut ws).await;
                        break Ok(());
                    }
                    Ok(false) => {}
                    Err(f) => break Err(f),
                }
            }
        }
    };
    session.summary(started.elapsed());
    outcome
}

struct Session<'a> {
    args: &'a ListenArgs,
    status: &'a Status,
    received: u64,
    /// Subscribe commands waiting for their reply: id → channel.
    pending: HashMap<u64, String>,
    /// The last stream position seen per channel, for the resume hint.
    positions: HashMap<String, Position>,
    welcomed: bool,
}

impl Session<'_> {
    /// Handle one frame; `Ok(true)` when `--count` is reached.
    fn on_frame(&mut self, frame: Option<std::result::Result<Message, WsError>>, shown: &str) -> Result<bool> {
        let msg = match frame {
            None => {
                return Err(Failure::new(
                    Exit::Closed,
                    format!("the connection to {shown} ended without a close frame"),
                )
                .hint("the gateway or the network went away; run the command again to reconnect"));
            }
            Some(Err(e)) => {
                return Err(Failure::new(Exit::Closed, format!("the connection to {shown} failed: {e}"))
                    .hint("the gateway or the network went away; run the command again to reconnect"));
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => self.on_text(t.as_str()),
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())).unwrap_or((1005, String::new()));
                Err(closed(code, &reason))
            }
            Message::Binary(_) => {
                self.status.say("(ignored a binary frame: pushmesh sends text)");
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    fn on_text(&mut self, text: &str) -> Result<bool> {
        if self.args.raw
            && !self.welcomed
            && let Some(welcome) = seed_welcome(text)
        {
            return self.on_control(&welcome).map(|()| false);
        }
        let frame = ServerFrame::parse(text);
        let control = match &frame {
            Some(ServerFrame::Welcome { .. }) => !self.welcomed,
            Some(ServerFrame::Reply { id, .. }) => self.pending.contains_key(id),
            Some(ServerFrame::Subscribed { .. } | ServerFrame::Unsubscribed { .. }) => {
                // In raw format a published value may look like one: only
                // the exact two-field frame is the server's.
                !self.args.raw
                    || serde_json::from_str::<Value>(text)
                        .is_ok_and(|v| v.as_object().is_some_and(|o| o.len() == 2 && o.contains_key("channel")))
            }
            _ => false,
        };
        if control {
            return self.on_control(frame.as_ref().expect("control frames parsed")).map(|()| false);
        }
        let message = match &frame {
            Some(m @ ServerFrame::Message { .. }) => Some(m),
            _ => None,
        };
        if !self.args.raw && message.is_none() {
            // A frame type this client does not know: show it, do not count it.
            self.status.say(format!("(frame) {text}"));
            return Ok(false);
        }
        self.received += 1;
        match (self.args.raw, self.args.output, message) {
            (true, _, _) | (false, Output::Json, _) => println!("{text}"),
            (false, Output::Data, Some(ServerFrame::Message { data, .. })) => println!("{data}"),
            (false, Output::Text, Some(ServerFrame::Message { channel, data, .. })) => {
                // Frames of broadcasts, user sends and connection sends all
                // come without a channel, and nothing else tells them apart.
                println!("{}: {data}", channel.as_deref().unwrap_or(NO_CHANNEL));
            }
            (false, _, _) => unreachable!("only messages get here in JSON format"),
        }
        if let Some((ch, p)) = message.and_then(ServerFrame::position) {
            self.positions.insert(ch.to_owned(), Position { epoch: p.epoch, offset: p.offset });
        }
        Ok(self.args.count.is_some_and(|n| self.received >= n))
    }

    fn on_control(&mut self, frame: &ServerFrame) -> Result<()> {
        match frame {
            ServerFrame::Welcome { connection, gateway, user } => {
                self.welcomed = true;
                let user = user.as_ref().map(|u| format!(", user {u}")).unwrap_or_default();
                self.status.say(format!("connected: connection {connection} on gateway {gateway}{user}"));
                if self.args.channel.is_empty() {
                    self.status.say(format!(
                        "no --channel: only broadcasts and sends to this connection arrive (pushmesh publish --connection {connection} hi)"
                    ));
                }
            }
            ServerFrame::Reply { id, error, recovered, epoch, offset, .. } => {
                let ch = self.pending.remove(id).unwrap_or_default();
                if let Some(err) = error {
                    let code = err.code.as_str();
                    let f = Failure::failed(format!("subscribe to {ch} refused: {code}: {}", err.message));
                    return Err(match code {
                        "permission_denied" => f.hint(format!(
                            "the token's channels do not cover {ch}; mint one that does: pushmesh token --user ID --channel '{ch}'"
                        )),
                        "invalid_channel" => f.hint("channel names are 1–255 bytes of letters, digits and _ - : . @ #"),
                        "limit_exceeded" => f.hint("this connection joined as many channels as the gateway allows"),
                        _ => f,
                    });
                }
                let mut line = format!("subscribed to {ch}");
                if self.args.since.is_some() {
                    match recovered {
                        Some(true) => line.push_str("; recovered: true (missed messages, if any, come first)"),
                        Some(false) => {
                            line.push_str("; recovered: false (messages since that position may have been missed)")
                        }
                        None => line.push_str("; recovered: not reported by this gateway"),
                    }
                }
                self.status.say(line);
                // The machine-readable form, for scripts that check it.
                if self.args.since.is_some() && !self.args.quiet {
                    eprintln!("{}", json!({ "channel": ch, "recovered": recovered, "epoch": epoch, "offset": offset }));
                }
            }
            ServerFrame::Subscribed { channel } => {
                self.status.say(format!("the server subscribed this connection to {channel}"))
            }
            ServerFrame::Unsubscribed { channel } => {
                self.status.say(format!("the server unsubscribed this connection from {channel}"))
            }
            _ => {}
        }
        Ok(())
    }

    fn summary(&self, elapsed: Duration) {
        self.status.say(format!("received {} message(s) in {}", self.received, human(elapsed)));
        let mut positions: Vec<_> = self.positions.iter().collect();
        positions.sort();
        for (ch, p) in positions {
            self.status.say(format!("resume {ch} from here: pushmesh listen --channel {ch} --since {p}"));
        }
    }
}

/// Why the gateway closed, and what to do about it.
pub fn closed(code: u16, reason: &str) -> Failure {
    let why = if reason.is_empty() { String::new() } else { format!(": {reason}") };
    let f = Failure::new(Exit::Closed, format!("the gateway closed the connection with code {code}{why}"));
    match code {
        1012 => f.hint("the gateway is restarting: run the command again to reconnect (to another gateway)"),
        1013 => f.hint("this client read too slowly and was cut off (slow consumer); reconnect, and read faster"),
        1008 => f.hint("the gateway's policy refused this client; see the reason"),
        1009 => f.hint("a message sent to the gateway was larger than its --max-message-bytes"),
        4000 => f.hint("disconnected through the server API (POST /disconnect)"),
        4001 => f.hint(
            "this gateway requires a token: pass --token (mint one with `pushmesh token --user ID --channel PATTERN`)",
        ),
        4002 => f.hint("the token expired: mint a fresh one (pushmesh token --ttl 1h …) and reconnect"),
        4003 => f.hint("this user already holds the most connections the gateway allows; close one"),
        4004..=4999 => f.hint("an application-chosen code: your backend disconnected this client (POST /disconnect)"),
        _ => f,
    }
}

async fn close(ws: &mut Ws) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

/// Connect, retrying while the gateway refuses connections (not started
/// yet), with a progress line every second.
async fn connect(
    url: &reqwest::Url,
    shown: &str,
    connect_timeout: Duration,
    deadline: Option<Instant>,
    status: &Status,
) -> Result<Ws> {
    let started = Instant::now();
    let give_up = deadline.map_or(started + connect_timeout, |d| d.min(started + connect_timeout));
    let mut last_progress = started;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        let attempt =
            tokio::time::timeout(left.max(Duration::from_millis(1)), tokio_tungstenite::connect_async(url.as_str()))
                .await;
        let err = match attempt {
            Ok(Ok((ws, _))) => return Ok(ws),
            Ok(Err(e)) => e,
            Err(_) => WsError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        };
        match &err {
            // 503: the gateway is there but not ready (no hub yet), draining or
            // full. Retry like a gateway that is not up yet; exit 3 at the end.
            WsError::Http(resp) if resp.status().as_u16() == 503 => {}
            WsError::Http(resp) => {
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                let detail = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| crate::truncate(&body, 200));
                let f = Failure::failed(format!(
                    "{shown} refused the WebSocket upgrade: HTTP {} {detail}",
                    resp.status().as_u16()
                ));
                return Err(if resp.status().as_u16() == 404 {
                    f.hint("is this a pushmesh ws-gateway? Its WebSocket path is /ws (e.g. ws://127.0.0.1:8080/ws)")
                } else {
                    f
                });
            }
            WsError::Url(e) => {
                return Err(Failure::usage(format!("cannot connect to {shown}: {e}")).hint(
                    "this build speaks ws:// only; for a TLS endpoint, port-forward to the gateway and use ws://",
                ));
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= give_up {
            let what = describe(&err);
            return Err(Failure::unreachable(format!(
                "cannot reach the gateway at {shown} ({what}) after {}",
                human(now - started)
            ))
            .hint("is pushmesh running? Start a local one with `pushmesh dev` (or `make run`), or point --gateway / PUSHMESH_GATEWAY_URL at your gateway"));
        }
        if now - last_progress >= Duration::from_secs(1) {
            last_progress = now;
            status.say(format!(
                "waiting for the gateway at {shown} ({}), {} so far…",
                describe(&err),
                human(now - started)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200).min(give_up.saturating_duration_since(now))).await;
    }
}

/// Why a connection attempt failed, in a few words: the I/O error, or the
/// status and the error message of an HTTP refusal.
fn describe(err: &WsError) -> String {
    match err {
        WsError::Io(e) => e.to_string(),
        WsError::Http(resp) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| crate::truncate(&body, 200));
            format!("HTTP {}: {detail}", resp.status().as_u16())
        }
        other => other.to_string(),
    }
}

/// The URL without its token, for messages.
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let hide = k == "token";
            (k.into_owned(), if hide { "***".to_owned() } else { v.into_owned() })
        })
        .collect();
    if pairs.is_empty() {
        return u.to_string();
    }
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// A raw-format client's welcome, the seed's own line
/// (`worker id:GATEWAY connection id:N connected`), as the JSON welcome's
/// fields.
fn seed_welcome(text: &str) -> Option<ServerFrame> {
    let rest = text.strip_prefix("worker id:")?;
    let (gateway, rest) = rest.split_once(" connection id:")?;
    let seq = rest.strip_suffix(" connected")?;
    seq.parse::<u64>().ok()?;
    Some(ServerFrame::Welcome { connection: format!("{gateway}:{seq}"), gateway: gateway.to_owned(), user: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(ws_url("ws://127.0.0.1:8080", false, None).unwrap().as_str(), "ws://127.0.0.1:8080/ws");
        assert_eq!(ws_url("127.0.0.1:8080", true, None).unwrap().as_str(), "ws://127.0.0.1:8080/ws?format=raw");
        assert_eq!(ws_url("http://h:1/custom", false, Some("a.b")).unwrap().as_str(), "ws://h:1/custom?token=a.b");
        assert_eq!(redacted(&ws_url("ws://h:1/ws", true, Some("secret")).unwrap()), "ws://h:1/ws?format=raw&token=***");
        assert_eq!(ws_url("ftp://x", false, None).unwrap_err().exit, Exit::Usage);
    }

    #[test]
    fn positions() {
        assert_eq!(Position::parse("3f2a:41").unwrap(), Position { epoch: "3f2a".into(), offset: 41 });
        assert_eq!(Position::parse("3f2a:41").unwrap().to_string(), "3f2a:41");
        assert!(Position::parse("41").is_err());
        assert!(Position::parse(":41").is_err());
        assert!(Position::parse("ab:x").is_err());
    }

    #[test]
    fn close_codes_say_what_to_do() {
        assert!(closed(4001, "authentication required").hint.unwrap().contains("pushmesh token"));
        assert!(closed(4002, "").hint.unwrap().contains("fresh"));
        assert_eq!(closed(1012, "restart").exit, Exit::Closed);
    }
}
