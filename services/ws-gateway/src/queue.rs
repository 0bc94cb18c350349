//! A connection's outbound path: the socket's write half and a bounded
//! queue of encoded WebSocket frames in front of it.
//!
//! Server frames are unmasked, so a frame's bytes (header and payload) are
//! the same for every client: the fan-out encodes a delivery once and hands
//! the same `Bytes` to every recipient. When a connection has nothing
//! queued, the sender writes those bytes straight into the socket with a
//! non-blocking `try_write` — no queue, no wake-up of the connection task,
//! which is what the benchmark's CPU per delivery was mostly made of beyond
//! the `write` itself. Only what the kernel does not take at once (a full
//! socket buffer, a partial write) is queued, and the connection task's
//! writer drains it when the socket is writable again, several frames per
//! `writev`.
//!
//! Every write, direct or from the queue, happens under the queue's mutex
//! (held for a non-blocking system call, never across an await), so frames
//! never interleave on the wire and keep their order. The bound counts
//! queued frames; a sender that finds it full gets `Full` and applies the
//! slow-consumer policy. Control frames (pong, ping, close) bypass the
//! bound. Nothing is allocated while the queue is empty, and a burst's
//! buffer is released once it drains.
//!
//! The connection's other outbound concern lives here too: the
//! `CloseSignal`, by which anyone (the fan-out for a slow consumer, the
//! server API, the reader for a protocol error) asks the writer to close
//! the socket with a code and reason.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::close;

/// One text frame on its way to one client.
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// A published message (counted as a delivery or a drop), as opposed to
    /// a reply or the welcome.
    pub is_delivery: bool,
}

/// Asks a connection's writer to close the socket with a code and reason.
/// The first request wins.
#[derive(Default)]
pub struct CloseSignal {
    notify: Notify,
    reason: OnceLock<(u16, String, &'static str)>,
}

impl CloseSignal {
    /// `metric_reason` labels the disconnect and any frames left unsent.
    pub fn fire(&self, code: u16, reason: impl Into<String>, metric_reason: &'static str) {
        if self.reason.set((code, reason.into(), metric_reason)).is_ok() {
            self.notify.notify_one();
        }
    }

    /// The slow-consumer policy: the connection's queue overflowed, so it
    /// cannot catch up by itself; close it with 1013.
    pub fn slow_consumer(&self) {
        self.fire(close::TRY_AGAIN_LATER, "slow consumer: outbound queue full", "slow_consumer");
    }

    pub async fn fired(&self) -> &(u16, String, &'static str) {
        loop {
            if let Some(r) = self.reason.get() {
                return r;
            }
            self.notify.notified().await;
        }
    }

    pub fn get(&self) -> Option<&(u16, String, &'static str)> {
        self.reason.get()
    }
}

/// Most frames handed to the kernel in one `writev`.
const MAX_FRAMES_PER_WRITE: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full,
    Closed,
}

pub struct OutQueue {
    /// The socket itself (one pointer less to chase per recipient on the
    /// fan-out path); the connection's reader reads it through `socket`.
    wire: TcpStream,
    state: Mutex<State>,
    notify: Notify,
    bound: usize,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Chunk>,
    /// The first chunk is partly written: it must be finished before
    /// anything else goes out, a close frame included.
    started: bool,
    closed: bool,
}

struct Chunk {
    bytes: Bytes,
    /// A published message (counted as a delivery or a drop), as opposed
    /// to a reply, the welcome or a control frame.
    is_delivery: bool,
}

impl OutQueue {
    pub fn new(wire: TcpStream, bound: usize) -> Self {
        Self { wire, state: Mutex::default(), notify: Notify::new(), bound: bound.max(1) }
    }

    /// The socket, for the connection's reader (which only reads).
    pub fn socket(&self) -> &TcpStream {
        &self.wire
    }

    /// Queue (or write at once) a text frame for this connection only.
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        self.send_wire(crate::protocol::wire_text(frame.text), frame.is_delivery, true).map(|_| ())
    }

    /// Send an encoded frame: written now when nothing is queued and the
    /// socket takes it whole (`Ok(true)`), else queued for the writer
    /// (`Ok(false)`). `bounded`: subject to the queue bound (control frames
    /// are not).
    pub fn send_wire(&self, mut bytes: Bytes, is_delivery: bool, bounded: bool) -> Result<bool, SendError> {
        let mut st = self.state.lock().expect("queue lock");
        if st.closed {
            return Err(SendError::Closed);
        }
        if !st.chunks.is_empty() {
            // The writer already owns the socket's turn and will get to it.
            if bounded && st.chunks.len() >= self.bound {
                return Err(SendError::Full);
            }
            st.chunks.push_back(Chunk { bytes, is_delivery });
            return Ok(false);
        }
        match self.wire.try_write(&bytes) {
            Ok(n) if n == bytes.len() => return Ok(true),
            Ok(n) => {
                bytes.advance(n);
                st.started = n > 0;
            }
            // WouldBlock, or an error the writer meets again and ends on.
            Err(_) => {}
        }
        st.chunks.push_back(Chunk { bytes, is_delivery });
        drop(st);
        self.notify.notify_one();
        Ok(false)
    }

    /// Queue a frame without writing it, ahead of anything sent later: the
    /// connection's first frames, written once it is live.
    pub fn hold(&self, bytes: Bytes) {
        let mut st = self.state.lock().expect("queue lock");
        st.chunks.push_back(Chunk { bytes, is_delivery: false });
        drop(st);
        self.notify.notify_one();
    }

    /// Returns once something is queued for the writer.
    pub async fn queued(&self) {
        loop {
            if !self.state.lock().expect("queue lock").chunks.is_empty() {
                return;
            }
            // notify_one stores a permit when nobody waits, so a push
            // between the check above and this await is not missed.
            self.notify.notified().await;
        }
    }

    /// Write what is queued until the queue is empty (waiting for the
    /// socket as needed). Returns the deliveries written; an error means
    /// the socket is gone.
    pub async fn flush(&self) -> io::Result<u64> {
        let mut written = 0;
        loop {
            match self.write_some(&mut written) {
                Ok(true) => return Ok(written),
                // More to write: let other tasks of this thread run between
                // two batches of a busy connection.
                Ok(false) => tokio::task::coop::consume_budget().await,
                // The socket's own writer slot (one waiter: this task).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| self.wire.poll_write_ready(cx)).await?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One `writev` of the queue's head; true when the queue is empty.
    fn write_some(&self, written: &mut u64) -> io::Result<bool> {
        let mut st = self.state.lock().expect("queue lock");
        if st.chunks.is_empty() {
            return Ok(true);
        }
        let mut slices = [IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(&st.chunks) {
            *slot = IoSlice::new(&chunk.bytes);
            count += 1;
        }
        let mut n = self.wire.try_write_vectored(&slices[..count])?;
        while n > 0 {
            let head = st.chunks.front_mut().expect("written bytes come from queued chunks");
            if n < head.bytes.len() {
                head.bytes.advance(n);
                st.started = true;
                return Ok(false);
            }
            n -= head.bytes.len();
            let done = st.chunks.pop_front().expect("head");
            *written += u64::from(done.is_delivery);
            st.started = false;
        }
        if st.chunks.is_empty() {
            // Drained: give the buffer back (an idle connection holds none).
            st.chunks = VecDeque::new();
            return Ok(true);
        }
        Ok(false)
    }

    /// Refuse further frames and drop what is queued, except the rest of a
    /// partly written frame (the peer would see a torn frame otherwise);
    /// then queue `last` (a close frame) behind it. Returns the deliveries
    /// dropped. Idempotent.
    pub fn close(&self, last: Option<Bytes>) -> u64 {
        let mut st = self.state.lock().expect("queue lock");
        st.closed = true;
        let keep = usize::from(st.started);
        let lost = st.chunks.iter().skip(keep).filter(|c| c.is_delivery).count() as u64;
        st.chunks.truncate(keep);
        if let Some(bytes) = last {
            st.chunks.push_back(Chunk { bytes, is_delivery: false });
        }
        drop(st);
        self.notify.notify_one();
        lost
    }

    /// The connection is over: refuse further frames and drop everything
    /// queued. Returns the deliveries dropped.
    pub fn abandon(&self) -> u64 {
        let mut st = self.state.lock().expect("queue lock");
        st.closed = true;
        let lost = st.chunks.iter().filter(|c| c.is_delivery).count() as u64;
        st.chunks = VecDeque::new();
        lost
    }
}

/// Where one connection's frames go: a WebSocket's socket, or the chunk
/// queue an SSE response body drains.
#[derive(Clone)]
pub enum Outbound {
    Ws(Arc<OutQueue>),
    Sse(Arc<SseQueue>),
}

impl Outbound {
    /// A text frame for this connection only (a reply, the welcome, a
    /// recovered message).
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        match self {
            Self::Ws(q) => q.try_send(frame),
            Self::Sse(q) => q.send(&frame.text, frame.is_delivery, true).map(|_| ()),
        }
    }
}

/// The outbound side of a Server-Sent Events connection: events queued as
/// chunks of text for the response body to take, bounded like a
/// WebSocket's queue (a full queue is a slow consumer).
///
/// Every frame the gateway builds is JSON; here a message frame becomes a
/// `data:` event (the default event type, so `EventSource.onmessage` gets
/// it) and any other frame an event named after its `type` (`welcome`,
/// `subscribed`…). A channel message moves the connection's position in
/// that channel, and its event carries the positions of every channel of
/// the stream as its `id`, so the browser's `Last-Event-ID` on reconnect
/// says where to resume each of them.
pub struct SseQueue {
    state: Mutex<SseState>,
    notify: Notify,
    bound: usize,
    /// The stream's channels, in the order of the `id` positions.
    channels: Vec<String>,
}

#[derive(Default)]
struct SseState {
    chunks: VecDeque<Bytes>,
    /// Events queued that carry a message (for the bound and the counts).
    messages: usize,
    closed: bool,
    /// Per channel (as `channels`): the last (epoch, offset) sent.
    positions: Vec<Option<(String, u64)>>,
}

impl SseQueue {
    pub fn new(channels: Vec<String>, positions: Vec<Option<(String, u64)>>, bound: usize) -> Self {
        let state = SseState { positions, ..Default::default() };
        Self { state: Mutex::new(state), notify: Notify::new(), bound: bound.max(1), channels }
    }

    /// Queue one frame as an event. `Ok(false)`: queued (an SSE event is
    /// never written at once; the body takes it).
    pub fn send(&self, text: &str, is_delivery: bool, bounded: bool) -> Result<bool, SendError> {
        let mut st = self.state.lock().expect("sse lock");
        if st.closed {
            return Err(SendError::Closed);
        }
        if bounded && is_delivery && st.messages >= self.bound {
            return Err(SendError::Full);
        }
        let mut event = String::with_capacity(text.len() + 64);
        if is_delivery {
            if let Some((channel, epoch, offset)) = crate::protocol::message_position(text)
                && let Some(i) = self.channels.iter().position(|c| c == channel)
            {
                st.positions[i] = Some((epoch.to_owned(), offset));
                event.push_str("id: ");
                event.push_str(&last_event_id(&st.positions));
                event.push('\n');
            }
            st.messages += 1;
        } else if let Some(kind) = crate::protocol::frame_type(text) {
            event.push_str("event: ");
            event.push_str(&kind);
            event.push('\n');
        }
        push_data(&mut event, text);
        st.chunks.push_back(Bytes::from(event));
        drop(st);
        self.notify.notify_one();
        Ok(false)
    }

    /// A comment line: keeps proxies from closing an idle stream.
    pub fn heartbeat(&self) {
        let mut st = self.state.lock().expect("sse lock");
        if !st.closed {
            st.chunks.push_back(Bytes::from_static(b": ping\n\n"));
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Queue raw text ahead of everything (the `retry:` advice).
    pub fn raw(&self, text: &'static str) {
        let mut st = self.state.lock().expect("sse lock");
        st.chunks.push_back(Bytes::from_static(text.as_bytes()));
    }

    /// Refuse further events, drop what is queued and end the stream with
    /// a `close` event (code and reason, as a WebSocket close would say).
    /// Returns the messages dropped. Idempotent.
    pub fn close(&self, code: u16, reason: &str) -> u64 {
        let mut st = self.state.lock().expect("sse lock");
        if st.closed {
            return 0;
        }
        st.closed = true;
        let lost = st.messages as u64;
        st.chunks.clear();
        st.messages = 0;
        let data = serde_json::json!({ "type": "close", "code": code, "reason": reason }).to_string();
        let mut event = String::from("event: close\n");
        push_data(&mut event, &data);
        st.chunks.push_back(Bytes::from(event));
        drop(st);
        self.notify.notify_one();
        lost
    }

    /// The client went away (the body was dropped): nothing more goes out.
    /// Returns the messages that never did.
    pub fn abandon(&self) -> u64 {
        let mut st = self.state.lock().expect("sse lock");
        st.closed = true;
        let lost = st.messages as u64;
        st.chunks = VecDeque::new();
        st.messages = 0;
        drop(st);
        self.notify.notify_one();
        lost
    }

    /// The next chunk for the response body; `None` once closed and drained.
    pub async fn next_chunk(&self) -> Option<Bytes> {
        loop {
            {
                let mut st = self.state.lock().expect("sse lock");
                if let Some(c) = st.chunks.pop_front() {
                    if !c.starts_with(b":") && !c.starts_with(b"event: ") {
                        st.messages = st.messages.saturating_sub(1);
                    }
                    return Some(c);
                }
                if st.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("sse lock").closed
    }
}

/// `epoch:offset` per channel, comma-separated (empty for a channel with
/// no position yet); one channel: exactly `epoch:offset`.
fn last_event_id(positions: &[Option<(String, u64)>]) -> String {
    let mut id = String::new();
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        if let Some((epoch, offset)) = p {
            id.push_str(epoch);
            id.push(':');
            id.push_str(itoa::Buffer::new().format(*offset));
        }
    }
    id
}

/// `data: <text>\n\n`, one `data:` line per line of text (a published
/// JSON value may hold line breaks between its tokens).
fn push_data(event: &mut String, text: &str) {
    for line in text.split('\n') {
        event.push_str("data: ");
        event.push_str(line.strip_suffix('\r').unwrap_or(line));
        event.push('\n');
    }
    event.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn f(s: &str) -> Frame {
        Frame { text: s.into(), is_delivery: true }
    }

    /// A queue on one end of a real TCP connection, and the other end.
    async fn pair(bound: usize) -> (OutQueue, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (OutQueue::new(server, bound), client)
    }

    async fn read_exactly(c: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        c.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn frames_are_written_in_order_directly_or_through_the_queue() {
        let (q, mut client) = pair(4).await;
        q.writable_for_test().await;
        assert_eq!(q.send_wire(Bytes::from_static(b"ab"), true, true), Ok(true));
        q.try_send(f("x")).unwrap();
        assert_eq!(read_exactly(&mut client, 5).await, b"ab\x81\x01x");
        assert_eq!(q.flush().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_full_socket_queues_up_to_the_bound_and_close_keeps_a_torn_frame_whole() {
        let (q, mut client) = pair(2).await;
        q.writable_for_test().await;
        // Fill the socket: the last direct write is partial or refused.
        let big = Bytes::from(vec![7u8; 64 * 1024]);
        let mut sent = 0usize;
        while q.send_wire(big.clone(), true, true) == Ok(true) {
            sent += big.len();
        }
        let started = q.state.lock().unwrap().started;
        assert_eq!(q.send_wire(Bytes::from_static(b"q1"), true, true), Ok(false));
        assert_eq!(q.send_wire(Bytes::from_static(b"q2"), true, true), Err(SendError::Full));
        assert_eq!(q.send_wire(Bytes::from_static(b"p"), false, false), Ok(false), "control frames bypass the bound");
        // Close: "q1" is dropped; the torn frame's rest is kept, then "C".
        assert_eq!(q.close(Some(Bytes::from_static(b"C"))), 1 + u64::from(!started));
        assert_eq!(q.send_wire(Bytes::from_static(b"late"), true, true), Err(SendError::Closed));
        let expected = if started { sent + big.len() + 1 } else { sent + 1 };
        let reader = tokio::spawn(async move {
            let all = read_exactly(&mut client, expected).await;
            (all[all.len() - 1], all[..all.len() - 1].iter().all(|b| *b == 7))
        });
        assert_eq!(q.flush().await.unwrap(), u64::from(started));
        assert_eq!(reader.await.unwrap(), (b'C', true));
    }

    #[tokio::test]
    async fn the_writer_is_told_when_something_is_queued() {
        let (q, _client) = pair(4).await;
        let q = std::sync::Arc::new(q);
        let q2 = q.clone();
        let t = tokio::spawn(async move { q2.queued().await });
        tokio::task::yield_now().await;
        q.close(Some(Bytes::from_static(b"C")));
        t.await.unwrap();
    }

    impl OutQueue {
        async fn writable_for_test(&self) {
            self.wire.writable().await.unwrap();
        }
    }

    #[tokio::test]
    async fn sse_events_carry_every_channels_position_and_close_ends_the_stream() {
        let q = SseQueue::new(vec!["a".into(), "b".into()], vec![None, Some(("e0".into(), 3))], 2);
        q.send(r#"{"type":"welcome","connection":"gw:1"}"#, false, false).unwrap();
        let m = r#"{"type":"message","channel":"a","data":{"x":1},"epoch":"e1","offset":7}"#;
        q.send(m, true, true).unwrap();
        q.send(r#"{"type":"message","data":"broadcast"}"#, true, true).unwrap();
        assert_eq!(q.send(m, true, true), Err(SendError::Full), "the bound counts messages");
        assert_eq!(
            &q.next_chunk().await.unwrap()[..],
            br#"event: welcome
data: {"type":"welcome","connection":"gw:1"}

"#
        );
        let first = q.next_chunk().await.unwrap();
        assert_eq!(std::str::from_utf8(&first).unwrap(), format!("id: e1:7,e0:3\ndata: {m}\n\n"));
        assert_eq!(&q.next_chunk().await.unwrap()[..], b"data: {\"type\":\"message\",\"data\":\"broadcast\"}\n\n");
        assert_eq!(q.close(1012, "restart"), 0);
        let last = q.next_chunk().await.unwrap();
        assert!(last.starts_with(b"event: close\ndata: {"), "{last:?}");
        assert_eq!(q.next_chunk().await, None);
    }
}
