//! Who may open a WebSocket here: the `Origin` allow-list (against
//! cross-site WebSocket hijacking), and the caps on connections per gateway
//! and per source IP. Checked at the upgrade, so a refusal is a clean HTTP
//! answer (403, 503, 429) and costs no WebSocket state.
//!
//! A `Slot` is held by each admitted connection for its whole life and
//! gives its place back when dropped, whatever way the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Origin(String),
    GatewayFull(usize),
    TooManyFromIp(usize),
}

pub struct Admission {
    origins: Vec<String>,
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// `origins` empty or containing "*": any origin. Limits of 0: none.
    pub fn new(origins: Vec<String>, max_total: usize, max_per_ip: usize) -> Self {
        let origins = if origins.iter().any(|o| o == "*") { Vec::new() } else { origins };
        Self { origins, max_total, max_per_ip, counts: Mutex::default() }
    }

    pub fn admit(self: &Arc<Self>, origin: Option<&str>, ip: IpAddr) -> Result<Slot, Refusal> {
        // Non-browser clients send no Origin; browsers always do, and that
        // is what a hijacking page cannot forge.
        if let Some(o) = origin
            && !self.origins.is_empty()
            && !self.origins.iter().any(|a| a.eq_ignore_ascii_case(o))
        {
            return Err(Refusal::Origin(pushmesh_common::ids::truncate(o, 100)));
        }
        let mut c = self.counts.lock().expect("admission lock");
        if self.max_total > 0 && c.total >= self.max_total {
            return Err(Refusal::GatewayFull(self.max_total));
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            return Err(Refusal::TooManyFromIp(self.max_per_ip));
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_default() += 1;
        Ok(Slot { admission: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock().expect("admission lock");
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A token bucket for one connection's commands: `rate` per second, up to
/// `burst` at once. Tiny and per connection, so no shared state.
pub struct CommandBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl CommandBudget {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate), burst, tokens: burst, last: std::time::Instant::now() }
    }

    /// Take one token; false when the client is over its rate.
    pub fn take(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_origins() {
        let a = Arc::new(Admission::new(vec!["https://app.example".into()], 3, 2));
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            a.admit(Some("https://evil.example"), ip1).err(),
            Some(Refusal::Origin("https://evil.example".into()))
        );
        let s1 = a.admit(Some("https://app.example"), ip1).unwrap();
        let _s2 = a.admit(None, ip1).unwrap();
        assert_eq!(a.admit(None, ip1).err(), Some(Refusal::TooManyFromIp(2)));
        let _s3 = a.admit(None, ip2).unwrap();
        assert_eq!(a.admit(None, ip2).err(), Some(Refusal::GatewayFull(3)));
        drop(s1);
        assert!(a.admit(None, ip1).is_ok(), "a closed connection gives its slot back");
    }

    #[test]
    fn budget() {
        let mut b = CommandBudget::new(1, 3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
    }
}
