//! A job of a rule with `run.unit` as a transient systemd unit, `hark-job-<id>.service`:
//! `Type=exec`, the rendered argv as its `ExecStart` (no shell), the rule's user (or the
//! daemon's own: a transient unit without `User=` would run as root), slice and
//! allow-listed properties (`src/rules/unit.rs`), and the same `HARK_*` environment as a
//! child of the daemon gets. The event reaches its stdin as a memfd holding the bytes as
//! received; stdout and stderr are pipes the daemon reads, so the output is logged (to
//! the journal, with the rule and job) and its tail kept exactly as for a child.
//!
//! Who starts it: a daemon running as root asks systemd itself (`systemd.rs`); any other
//! daemon (the packaged one runs as `hark`) hands the job to the root-owned unit starter
//! (`starter.rs`, over `wire.rs`), which renders it again from root's rule files, starts
//! the unit and reports its end. Either way a timeout or cancel stops the unit and systemd
//! kills its whole cgroup, and the job is recorded only once the unit has ended. Nothing
//! here blocks the runtime: zbus runs on tokio.

pub mod starter;
pub mod systemd;
pub mod wire;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::runner::{cancelled, collect, drain, pump, Finished, Outcome, Sink, Spec};
pub use systemd::unit_name;
use systemd::{State, UnitFds};
use wire::{Reply, Request};

/// How long the starter may take to render the job and have systemd start it.
const STARTER_REPLY: Duration = Duration::from_secs(90);

/// The daemon's own user: what a unit without `run.unit.user` runs as.
fn own_user() -> Result<String, String> {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => Ok(u.name),
        Ok(None) => Err(format!("the daemon's uid {uid} has no user name")),
        Err(e) => Err(format!("looking up the daemon's uid {uid}: {e}")),
    }
}

fn spawn_failed(why: String, started: Instant) -> Finished {
    Finished {
        outcome: Outcome::SpawnFailed(why),
        output_tail: String::new(),
        output_bytes: 0,
        duration: started.elapsed(),
    }
}

/// A started unit, and who watches it.
enum Started {
    /// The daemon runs as root and talks to systemd itself.
    Direct {
        conn: zbus::Connection,
        manager: zbus::Proxy<'static>,
        /// Stops the unit if the run is dropped before it ended (daemon shutdown).
        guard: StopOnDrop,
    },
    /// The unit starter does; closing the connection stops the unit.
    Starter {
        lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
        writer: tokio::net::unix::OwnedWriteHalf,
    },
}

/// Stops the unit of a run that is dropped before it ended (daemon shutdown).
struct StopOnDrop(Option<(zbus::Connection, String)>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some((conn, name)) = self.0.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(m) = systemd::manager(&conn).await {
                    let _ = systemd::stop(&m, &name).await;
                }
            });
        }
    }
}

/// Start the unit as root: stdin is a memfd of the event, out and err the pipes' ends.
async fn start_direct(
    spec: &Spec,
    name: &str,
    out: &std::io::PipeWriter,
    err: &std::io::PipeWriter,
) -> Result<(Started, String), String> {
    let user = match spec.unit.as_ref().and_then(|u| u.user.clone()) {
        Some(u) => u,
        None => own_user().map_err(|e| format!("run.unit: {e}"))?,
    };
    let conn = zbus::Connection::system()
        .await
        .map_err(|e| format!("run.unit: cannot reach systemd on the system bus: {e}"))?;
    let manager = systemd::manager(&conn)
        .await
        .map_err(|e| format!("run.unit: systemd's manager: {e}"))?;
    let stdin = match spec.stdin.is_null() {
        true => None,
        false => Some(
            systemd::memfd_with(&spec.stdin.bytes())
                .map_err(|e| format!("run.unit: the event's memfd: {e}"))?,
        ),
    };
    let fds = UnitFds {
        stdin: stdin.as_ref().map(|f| f.as_fd()),
        stdout: out.as_fd(),
        stderr: err.as_fd(),
    };
    let props = systemd::properties(spec, &user, fds)?;
    systemd::start(&manager, name, &props, spec)
        .await
        .map_err(|e| format!("systemd did not start {name}: {e}"))?;
    let guard = StopOnDrop(Some((conn.clone(), name.to_string())));
    Ok((
        Started::Direct {
            conn,
            manager,
            guard,
        },
        user,
    ))
}

/// Hand the job to the unit starter, which starts the unit as root's files say.
async fn start_via_starter(
    spec: &Spec,
    out: &std::io::PipeWriter,
    err: &std::io::PipeWriter,
) -> Result<(Started, String), String> {
    let Some(origin) = &spec.origin else {
        return Err("internal error: a run.unit job without its origin".into());
    };
    let request = Request {
        job: spec.job,
        rule: spec.rule.clone(),
        attempt: origin.attempt,
        reason: origin.reason,
        events: origin.events.iter().map(|e| e.as_ref().into()).collect(),
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| format!("run.unit: {e}"))?;
    line.push(b'\n');
    let unreachable = |e: std::io::Error| {
        format!(
            "run.unit: cannot reach the unit starter at {}: {e} (hark-unit-starter.socket starts it as root: systemctl status hark-unit-starter.socket)",
            wire::SOCKET
        )
    };
    let stream = tokio::net::UnixStream::connect(wire::SOCKET)
        .await
        .map_err(unreachable)?;
    wire::send_fds(stream.as_fd(), &[out.as_fd(), err.as_fd()]).map_err(unreachable)?;
    let (rd, mut writer) = stream.into_split();
    writer.write_all(&line).await.map_err(unreachable)?;
    let mut lines = tokio::io::BufReader::new(rd).lines();
    let reply = tokio::time::timeout(STARTER_REPLY, lines.next_line())
        .await
        .map_err(|_| format!("run.unit: the unit starter did not answer in {STARTER_REPLY:?}"))?
        .map_err(unreachable)?;
    match reply.as_deref().map(serde_json::from_str::<Reply>) {
        Some(Ok(Reply::Started { user, .. })) => Ok((Started::Starter { lines, writer }, user)),
        Some(Ok(Reply::Refused { why })) => Err(format!("the unit starter refused the job: {why}")),
        Some(Ok(other)) => Err(format!("the unit starter answered {other:?} before it started the unit")),
        Some(Err(e)) => Err(format!("the unit starter's reply: {e}")),
        None => Err("the unit starter closed the connection without an answer (journalctl -u 'hark-unit-starter@*')".into()),
    }
}

/// Run `spec` (which has `unit`) as a transient unit to its end.
pub(super) async fn run(spec: Spec, mut cancel: watch::Receiver<bool>) -> Finished {
    let started = Instant::now();
    let name = unit_name(spec.job);
    let program = spec.argv.first().cloned().unwrap_or_default();
    let pipes = std::io::pipe().and_then(|out| Ok((out, std::io::pipe()?)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return spawn_failed(format!("run.unit: output pipes: {e}"), started),
    };
    let begun = if nix::unistd::geteuid().is_root() {
        start_direct(&spec, &name, &out_w, &err_w).await
    } else {
        start_via_starter(&spec, &out_w, &err_w).await
    };
    // systemd has its copies of the unit's ends; ours would hold the pipes open.
    drop(out_w);
    drop(err_w);
    let (unit, user) = match begun {
        Ok(b) => b,
        Err(why) => return spawn_failed(why, started),
    };
    info!(rule = %spec.rule, job = spec.job, unit = %name, user = %user, "started as a transient unit");
    let sink = Arc::new(Mutex::new(Sink::for_spec(&spec)));
    let mut readers = Vec::new();
    for (reader, stream) in [(out_r, "stdout"), (err_r, "stderr")] {
        match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
            Ok(r) => readers.push(tokio::spawn(pump(
                r,
                sink.clone(),
                spec.rule.clone(),
                spec.job,
                stream,
            ))),
            Err(e) => {
                warn!(rule = %spec.rule, job = spec.job, "cannot read the unit's {stream}: {e}")
            }
        }
    }
    let finished = match unit {
        Started::Direct {
            conn,
            manager,
            mut guard,
        } => {
            let finished = systemd::wait(&conn, &manager, &name, &spec, &mut cancel, started).await;
            if finished.is_err() {
                // Lost track of it: it must not run on unsupervised.
                let _ = systemd::stop(&manager, &name).await;
            }
            guard.0 = None;
            finished
        }
        Started::Starter { lines, writer } => {
            wait_for_starter(lines, writer, &name, &spec, &mut cancel, started).await
        }
    };
    // The connection is gone now: systemd collects the unit and closes its ends of the
    // pipes, so the readers see EOF.
    drain(&mut readers, Duration::from_secs(2)).await;
    let (output_tail, output_bytes) = collect(&sink);
    let outcome = match finished {
        Ok((st, None)) => systemd::outcome(&st, &program, &name),
        Ok((_, Some(ours))) => ours,
        Err(why) => {
            warn!(rule = %spec.rule, job = spec.job, "{why}");
            Outcome::Failed {
                code: None,
                signal: None,
            }
        }
    };
    Finished {
        outcome,
        output_tail,
        output_bytes,
        duration: started.elapsed(),
    }
}

/// Wait for the starter's word that the unit ended; a timeout or cancel asks it to stop
/// the unit first, and the outcome is then ours (`Some`), not the unit's.
async fn wait_for_starter(
    mut lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
    mut writer: tokio::net::unix::OwnedWriteHalf,
    name: &str,
    spec: &Spec,
    cancel: &mut watch::Receiver<bool>,
    started: Instant,
) -> Result<(State, Option<Outcome>), String> {
    let timeout = systemd::timed_out(spec, started);
    tokio::pin!(timeout);
    let mut ours: Option<Outcome> = None;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = line.map_err(|e| format!("{name}: the unit starter's connection: {e}"))?;
                let Some(line) = line else {
                    return Err(format!("{name}: the unit starter closed the connection before the unit ended (journalctl -u 'hark-unit-starter@*')"));
                };
                match serde_json::from_str::<Reply>(&line) {
                    Ok(Reply::Ended { state, .. }) => return Ok((state, ours)),
                    Ok(Reply::Lost { why }) => return Err(format!("{name}: the unit starter lost track of it: {why}")),
                    Ok(other) => return Err(format!("{name}: the unit starter said {other:?}")),
                    Err(e) => return Err(format!("{name}: the unit starter's reply: {e}")),
                }
            }
            _ = &mut timeout, if ours.is_none() => ours = Some(Outcome::TimedOut),
            _ = cancelled(cancel), if ours.is_none() => ours = Some(Outcome::Cancelled),
        }
        if ours.is_some() {
            info!(rule = %spec.rule, job = spec.job, "stopping {name}");
            let stop = format!("{}\n", wire::STOP);
            writer
                .write_all(stop.as_bytes())
                .await
                .map_err(|e| format!("{name}: asking the unit starter to stop it: {e}"))?;
        }
    }
}
