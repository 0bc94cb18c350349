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
    fn numbers_are_found() {
        let m = message_json(42, 1_700_000_000_123_456_789, 3);
        assert_eq!(number_after(m.as_bytes(), br#""s":"#), Some(42));
        assert_eq!(number_after(m.as_bytes(), br#""t":"#), Some(1_700_000_000_123_456_789));
        assert_eq!(number_after(b"{}", br#""s":"#), None);
    }
}
