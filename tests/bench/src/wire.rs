//! What travels: the benchmark's message content, the WebSocket frames the
//! ceiling pre-builds, and the few frame-level pieces the client needs.
//!
//! Clients do not use a general WebSocket library: a benchmark client must
//! cost as little CPU as possible on a 2-core machine where it competes with
//! the system under test. Server frames are unmasked and, from both
//! pushmesh and the ceiling, never fragmented, so parsing is a header read
//! and a slice.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds: comparable between processes on one machine.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The published JSON value: sequence number, publish timestamp (the
/// *scheduled* send time, so a late publisher shows up as latency instead
/// of hiding it) and optional padding.
pub fn data_json(seq: u64, t_ns: u64, pad: usize) -> String {
    if pad == 0 {
        format!(r#"{{"s":{seq},"t":{t_ns}}}"#)
    } else {
        format!(r#"{{"s":{seq},"t":{t_ns},"p":"{}"}}"#, "x".repeat(pad))
    }
}

/// The data of a targeted message (unicast, channels, bulk): sequence
/// number, scheduled send time, and `c`, the intended receiver (a client's
/// global number, or a channel's), which the worker compares with its own so
/// a misdelivery is caught; padded with `"p"` to at least `size` bytes of
/// JSON text in all.
pub fn targeted_json(seq: u64, t_ns: u64, c: u64, size: usize, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let start = out.len();
    let _ = write!(out, r#"{{"s":{seq},"t":{t_ns},"c":{c}"#);
    // Counting the closing brace; the padding field `,"p":""` is 7 bytes.
    let used = out.len() - start + 1;
    if size >= used + 7 {
        out.extend_from_slice(br#","p":""#);
        out.resize(out.len() + (size - used - 7), b'x');
        out.push(b'"');
    }
    out.push(b'}');
}

/// An even, deterministic spread of sequence numbers over `n` receivers
/// (splitmix64): consecutive messages go to unrelated receivers, as in a
/// real chat or notification load, and every run addresses the same ones.
pub fn spread(seq: u64, n: usize) -> usize {
    (spread_bits(seq) % n.max(1) as u64) as usize
}

/// 64 well-mixed bits from `seq` (splitmix64's finaliser).
pub fn spread_bits(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Percent-encode `text` for a query string (everything but the unreserved
/// characters).
pub fn percent_encode(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Decode a query-string value (`%XX` and `+`); `None` when malformed.
pub fn percent_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The client frame exactly as the gateway encodes a broadcast delivery.
pub fn message_json(seq: u64, t_ns: u64, pad: usize) -> String {
    format!(r#"{{"type":"message","data":{}}}"#, data_json(seq, t_ns, pad))
}

/// Append one unmasked server text frame.
pub fn put_server_text(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    push_len(out, payload.len(), 0);
    out.extend_from_slice(payload);
}

/// Append one masked client frame (clients must mask; the key needs no
/// secrecy here).
pub fn put_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x80 | opcode);
    push_len(out, payload.len(), 0x80);
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
}

fn push_len(out: &mut Vec<u8>, len: usize, mask_bit: u8) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// One complete frame at the start of `buf`: (opcode, payload range,
/// total length). `None` while incomplete. Err for a masked server frame.
/// (opcode, payload range, total frame length).
pub type FrameAt = (u8, std::ops::Range<usize>, usize);

pub fn parse_frame(buf: &[u8]) -> Result<Option<FrameAt>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err("server frame is masked");
    }
    let (len, head) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some((opcode, head..head + len, head + len)))
}

/// The unsigned number after `key` (e.g. `"s":`) in a JSON text.
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let mut n: u64 = 0;
    let mut any = false;
    for &b in &text[at..] {
        if b.is_ascii_digit() {
            n = n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

/// A field of the benchmark's data, as JSON (`"s":1`) or, when the data
/// travelled as a JSON string (the seed's `content`), escaped (`\"s\":1`).
pub fn field(text: &[u8], name: u8) -> Option<u64> {
    let plain = [b'"', name, b'"', b':'];
    number_after(text, &plain).or_else(|| number_after(text, &[b'\\', b'"', name, b'\\', b'"', b':']))
}

/// The JSON string after `key` (e.g. `"connection":"`) up to the next quote.
pub fn string_after<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let len = text[at..].iter().position(|b| *b == b'"')?;
    Some(&text[at..at + len])
}

/// The client's upgrade request (a fixed key: the accept value is checked
/// by status only).
pub fn upgrade_request(host: &std::net::SocketAddr, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut b = Vec::new();
        let long = "y".repeat(70_000);
        put_server_text(&mut b, b"hi");
        put_server_text(&mut b, "z".repeat(300).as_bytes());
        put_server_text(&mut b, long.as_bytes());
        let (op, r, n) = parse_frame(&b).unwrap().unwrap();
        assert_eq!((op, &b[r]), (1, &b"hi"[..]));
        let rest = &b[n..];
        let (_, r, n2) = parse_frame(rest).unwrap().unwrap();
        assert_eq!(r.len(), 300);
        let (_, r, _) = parse_frame(&rest[n2..]).unwrap().unwrap();
        assert_eq!(r.len(), 70_000);
        assert!(parse_frame(&b[..3]).unwrap().is_none());
    }

    #[test]
    fn targeted_data_is_padded_to_size_and_parsed_back() {
        let mut b = Vec::new();
        targeted_json(7, 1_700_000_000_000_000_000, 12, 64, &mut b);
        assert_eq!(b.len(), 64, "{}", String::from_utf8_lossy(&b));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!((v["s"].as_u64(), v["c"].as_u64()), (Some(7), Some(12)));
        let mut short = Vec::new();
        targeted_json(7, 1, 12, 0, &mut short);
        assert_eq!(short, br#"{"s":7,"t":1,"c":12}"#);
        // As the seed form delivers it: a JSON string holding the text.
        let escaped = serde_json::to_string(std::str::from_utf8(&b).unwrap()).unwrap();
        assert_eq!(field(escaped.as_bytes(), b's'), Some(7));
        assert_eq!(field(escaped.as_bytes(), b'c'), Some(12));
        assert_eq!(field(&b, b't'), Some(1_700_000_000_000_000_000));
    }

    #[test]
    fn percent_coding_round_trips() {
        let mut e = Vec::new();
        percent_encode(br#"{"s":1} gw-0:7"#, &mut e);
        assert_eq!(e, b"%7B%22s%22%3A1%7D%20gw-0%3A7");
        assert_eq!(percent_decode(&e).unwrap(), br#"{"s":1} gw-0:7"#);
        assert!(percent_decode(b"%7").is_none());
    }

    #[test]
    fn spread_is_even() {
        let mut n = [0u32; 10];
        for s in 0..100_000 {
            n[spread(s, 10)] += 1;
        }
        assert!(n.iter().all(|c| (9_000..11_000).contains(c)), "{n:?}");
    }

    #[test]
    fn numbers_are_found() {
        let m = message_json(42, 1_700_000_000_123_456_789, 3);
        assert_eq!(number_after(m.as_bytes(), br#""s":"#), Some(42));
        assert_eq!(number_after(m.as_bytes(), br#""t":"#), Some(1_700_000_000_123_456_789));
        assert_eq!(number_after(b"{}", br#""s":"#), None);
    }
}
