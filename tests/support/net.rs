//! Free loopback ports for test and bench peers, and one raw HTTP exchange (a metrics
//! scrape). These return errors; tests wrap them in panicking helpers (`common::free_port`),
//! benches pass the error on to their report.
//!
//! Included with `#[path]` from `tests/common/mod.rs` and `benches/support/mod.rs`.
#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A TCP port that was free a moment ago on 127.0.0.1, picked at random below the kernel's
/// ephemeral range.
///
/// Not port 0's answer: that comes from the ephemeral range, where every outgoing connection
/// of every parallel test also takes its local port, so a relay restarted on its old port
/// (tests/invariants.rs) could find it taken by a stranger's connection.
///
/// Never the same port twice in one process: a port is free until its peer binds it, and
/// a test asks for all of its ports before it starts any peer (two peers of one relay were
/// once given the same one).
pub fn try_free_port() -> Result<u16, String> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let first = low.saturating_sub(10000).max(1024);
    let span = u64::from(low.saturating_sub(first)).max(1);
    let state = std::collections::hash_map::RandomState::new();
    for attempt in 0..200u64 {
        let mut h = state.build_hasher();
        h.write_u64(attempt);
        let port = first + (h.finish() % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
    given.insert(port);
    Ok(port)
}

/// `tcp://127.0.0.1:<free port>`.
pub fn try_free_endpoint() -> Result<String, String> {
    Ok(format!("tcp://127.0.0.1:{}", try_free_port()?))
}

/// Send `request` as is on a fresh connection to `addr` and read everything until the
/// server closes it (or `timeout` passes without a byte).
pub fn try_http(addr: &str, request: &str, timeout: Duration) -> Result<String, String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| format!("read timeout: {e}"))?;
    sock.write_all(request.as_bytes())
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut out = String::new();
    sock.read_to_string(&mut out)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(out)
}
