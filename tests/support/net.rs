//! Free loopback ports for test and bench peers. These return errors; tests wrap them in
//! panicking helpers (`common::free_port`), benches pass the error on to their report.
//!
//! Included with `#[path]` from `tests/common/mod.rs` and `benches/support/mod.rs`.
#![allow(dead_code)]

use std::net::TcpListener;

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
