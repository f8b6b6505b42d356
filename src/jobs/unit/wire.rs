//! The unit starter's protocol: one Unix stream connection per job, from the trigger
//! daemon (user hark) to `hark unit-starter` (root; hark-unit-starter.socket starts one
//! per connection, `Accept=yes`).
//!
//! - daemon → starter: one byte that carries the unit's stdout and stderr (`SCM_RIGHTS`),
//!   then the [`Request`] as one JSON line; later, a `stop` line on a timeout or cancel.
//!   Closing the connection stops the unit too (a daemon that died supervises nothing).
//! - starter → daemon: [`Reply::Started`] or [`Reply::Refused`], then [`Reply::Ended`] or
//!   [`Reply::Lost`], each a JSON line.
//!
//! The request carries the job as it was filed (rule name, attempt, reason, the events as
//! received), not a command line: the starter renders the job itself from root's rule
//! files, so the daemon can never ask for a command, user or property they do not give.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::systemd::State;
use crate::jobs::launch::Reason;
use crate::jobs::store::StoredEvent;

/// Where hark-unit-starter.socket listens (root's, group hark, 0660).
pub const SOCKET: &str = "/run/hark/unit-starter.sock";
/// The largest request the starter reads (a batch of many large events is still far
/// below it; a daemon that sends more is refused, not trusted with the starter's memory).
pub const MAX_REQUEST: usize = 256 << 20;
/// The line that asks the starter to stop the unit.
pub const STOP: &str = "stop";

/// One job, as the scheduler filed it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub job: i64,
    pub rule: String,
    pub attempt: u32,
    pub reason: Reason,
    pub events: Vec<StoredEvent>,
}

/// What the starter says, in this order: `Started` or `Refused`, then `Ended` or `Lost`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Started {
        unit: String,
        user: String,
    },
    Refused {
        why: String,
    },
    /// The unit ended; `stopped` when it was stopped on the daemon's `stop` (or close).
    Ended {
        state: State,
        stopped: bool,
    },
    /// The starter lost track of the unit (and stopped it).
    Lost {
        why: String,
    },
}

impl Reply {
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!("{{\"lost\":{{\"why\":\"cannot encode a reply: {e}\"}}}}").into_bytes()
        });
        line.push(b'\n');
        line
    }
}

/// Send `fds` with one byte (a byte never blocks on a fresh connection).
pub fn send_fds(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(b"F")];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receive the byte [`send_fds`] sent and the descriptors it carries.
pub fn recv_fds(sock: BorrowedFd<'_>) -> std::io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut byte)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: descriptors the kernel just installed for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before a request",
        ));
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other(
            "more descriptors than the unit's stdout and stderr",
        ));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_arrive_with_their_byte_and_replies_are_lines() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut r, w) = std::io::pipe().unwrap();
        send_fds(a.as_fd(), &[w.as_fd(), w.as_fd()]).unwrap();
        drop(w);
        let mut fds = recv_fds(b.as_fd()).unwrap().into_iter();
        assert_eq!(fds.len(), 2);
        let mut passed = std::fs::File::from(fds.next().unwrap());
        passed.write_all(b"through the copy").unwrap();
        drop(passed);
        drop(fds);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the copy");
        let line = Reply::Refused { why: "no".into() }.line();
        assert_eq!(line, b"{\"refused\":{\"why\":\"no\"}}\n");
        let back: Reply = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, Reply::Refused { why: "no".into() });
    }
}
