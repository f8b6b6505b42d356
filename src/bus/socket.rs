//! libzmq sockets with explicit options: HWMs, TCP keepalive, ZMTP heartbeats, reconnect
//! backoff and linger. Defaults differ between libzmq versions; hark never relies on them.

use crate::config::ZmqConfig;

fn millis(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Create a socket of `kind` with the configured options applied.
pub fn new_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    cfg: &ZmqConfig,
) -> zmq::Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    s.set_sndhwm(cfg.send_hwm)?;
    s.set_rcvhwm(cfg.receive_hwm)?;
    s.set_linger(millis(cfg.linger))?;
    s.set_tcp_keepalive(1)?;
    s.set_tcp_keepalive_idle(
        i32::try_from(cfg.tcp_keepalive_idle.as_secs())
            .unwrap_or(i32::MAX)
            .max(1),
    )?;
    s.set_tcp_keepalive_intvl(10)?;
    s.set_tcp_keepalive_cnt(6)?;
    s.set_heartbeat_ivl(millis(cfg.heartbeat_interval))?;
    s.set_heartbeat_timeout(millis(cfg.heartbeat_timeout))?;
    s.set_heartbeat_ttl(millis(cfg.heartbeat_timeout))?;
    s.set_reconnect_ivl(millis(cfg.reconnect_interval))?;
    s.set_reconnect_ivl_max(millis(cfg.reconnect_interval_max))?;
    Ok(s)
}

/// Bind every endpoint, naming the one that failed.
pub fn bind_all(socket: &zmq::Socket, endpoints: &[String], role: &str) -> anyhow::Result<()> {
    for ep in endpoints {
        socket.bind(ep).map_err(|e| {
            anyhow::anyhow!("cannot bind the {role} socket to {ep}: {e} (is another relay already listening there?)")
        })?;
    }
    Ok(())
}

/// Connect to every endpoint, naming the one that failed.
pub fn connect_all(socket: &zmq::Socket, endpoints: &[String], role: &str) -> anyhow::Result<()> {
    for ep in endpoints {
        socket
            .connect(ep)
            .map_err(|e| anyhow::anyhow!("cannot connect the {role} socket to {ep}: {e}"))?;
    }
    Ok(())
}

/// Receive one multipart message as libzmq's own messages, into `frames` (cleared first,
/// so a caller reusing it allocates nothing): a received frame references the buffer
/// libzmq read it into, so it can be published again without a copy.
pub fn recv_frames(
    socket: &zmq::Socket,
    flags: i32,
    frames: &mut Vec<zmq::Message>,
) -> zmq::Result<()> {
    frames.clear();
    loop {
        let frame = socket.recv_msg(flags)?;
        let more = frame.get_more();
        frames.push(frame);
        if !more {
            return Ok(());
        }
    }
}

/// The event number of one socket-monitor message (`[u16 event, u32 value]` in native
/// order, then the endpoint), or None if it is too short.
pub fn monitor_event(frames: &[Vec<u8>]) -> Option<u16> {
    frames
        .first()
        .and_then(|f| f.get(..2))
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
}
