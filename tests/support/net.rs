//! Free loopback ports for test and bench peers, and one raw HTTP exchange (a metrics
//! scrape). These return errors; tests wrap them in panicking helpers (`common::free_port`),
//! benches pass the error on to their report.
//!
//! Included with `#[path]` from `tests/common/mod.rs` and `benches/support/mod.rs`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A TCP port that was free a moment ago on 127.0.0.1 (bind to port 0, read, release).
pub fn try_free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
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
