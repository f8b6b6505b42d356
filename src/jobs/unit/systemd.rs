//! systemd's side of a `run.unit` job, over the system bus (zbus; never `systemd-run`):
//! the unit's properties, `StartTransientUnit`, polling its state to the end, `StopUnit`.
//! Both callers that may start units use it: the daemon itself when it runs as root, and
//! the root-owned unit starter (`starter.rs`) for a daemon that does not.
//!
//! `AddRef` keeps the unit loaded while this connection holds it, so its result can be
//! read after it ended (`CollectMode=inactive-or-failed` then lets systemd collect it).
//! The unit is polled (a bounded 100 ms poll, which needs no signal subscription) until it
//! is inactive or failed: systemd stops the whole cgroup when the main process exits
//! (`KillMode=control-group`), so nothing of the job runs when it is recorded. A timeout or
//! cancel is a `StopUnit`: SIGTERM to every process of the cgroup, `TimeoutStopSec` (the
//! rule's grace), then SIGKILL.

use std::io::{Seek, Write};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use zbus::zvariant::{Fd, OwnedObjectPath, OwnedValue, Value};

use crate::jobs::runner::{cancelled, Outcome, Spec};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const POLL: Duration = Duration::from_millis(100);
/// A unit systemd has not started after this long is given up (it never ran).
const START_LIMIT: Duration = Duration::from_secs(60);
const UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";

/// The unit a job runs as.
pub fn unit_name(job: i64) -> String {
    format!("hark-job-{job}.service")
}

/// An anonymous in-memory file holding `bytes`, at offset 0: the unit reads it as stdin
/// however large the event is, with no writer to keep alive.
pub(super) fn memfd_with(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the fd it returns is ours.
    let fd = unsafe { nix::libc::memfd_create(c"hark-event".as_ptr(), nix::libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// The descriptors a unit gets: stdin (`None`: /dev/null), stdout and stderr.
#[derive(Clone, Copy)]
pub(super) struct UnitFds<'a> {
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

fn prop_value(v: &crate::rules::unit::PropValue) -> Value<'static> {
    use crate::rules::unit::PropValue;
    match v {
        PropValue::Bool(b) => Value::from(*b),
        PropValue::Str(s) => Value::from(s.clone()),
        PropValue::Strs(s) => Value::from(s.clone()),
        PropValue::U64(n) => Value::from(*n),
        PropValue::I32(n) => Value::from(*n),
    }
}

/// The unit's properties, as `StartTransientUnit` takes them.
pub(super) fn properties<'a>(
    spec: &Spec,
    user: &str,
    fds: UnitFds<'a>,
) -> Result<Vec<(&'static str, Value<'a>)>, String> {
    let unit = spec.unit.clone().unwrap_or_default();
    let Some(program) = spec.argv.first() else {
        return Err("empty command".into());
    };
    let grace_us = u64::try_from(spec.grace.as_micros()).unwrap_or(u64::MAX);
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut props: Vec<(&'static str, Value<'a>)> = vec![
        (
            "Description",
            Value::from(format!("hark job {} (rule {})", spec.job, spec.rule)),
        ),
        ("Type", Value::from("exec")),
        (
            "ExecStart",
            Value::from(vec![(program.clone(), spec.argv.clone(), false)]),
        ),
        ("Environment", Value::from(env)),
        ("User", Value::from(user.to_string())),
        ("AddRef", Value::from(true)),
        ("CollectMode", Value::from("inactive-or-failed")),
        ("KillMode", Value::from("control-group")),
        ("TimeoutStopUSec", Value::from(grace_us)),
        ("SendSIGKILL", Value::from(true)),
    ];
    if let Some(dir) = &spec.workdir {
        props.push(("WorkingDirectory", Value::from(dir.display().to_string())));
    }
    if let Some(slice) = unit.slice {
        props.push(("Slice", Value::from(slice)));
    }
    match fds.stdin {
        Some(fd) => props.push(("StandardInputFileDescriptor", Value::from(Fd::from(fd)))),
        None => props.push(("StandardInput", Value::from("null"))),
    }
    props.push((
        "StandardOutputFileDescriptor",
        Value::from(Fd::from(fds.stdout)),
    ));
    props.push((
        "StandardErrorFileDescriptor",
        Value::from(Fd::from(fds.stderr)),
    ));
    for p in &unit.properties {
        props.push((p.dbus, prop_value(&p.value)));
    }
    Ok(props)
}

pub(super) async fn manager(conn: &zbus::Connection) -> zbus::Result<zbus::Proxy<'static>> {
    zbus::Proxy::new(conn, SYSTEMD, MANAGER_PATH, MANAGER).await
}

async fn start_once(
    manager: &zbus::Proxy<'_>,
    name: &str,
    props: &[(&'static str, Value<'_>)],
) -> zbus::Result<()> {
    let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
    let _job: OwnedObjectPath = manager
        .call("StartTransientUnit", &(name, "fail", props, aux))
        .await?;
    Ok(())
}

fn exists(result: &zbus::Result<()>) -> bool {
    matches!(result, Err(zbus::Error::MethodError(e, _, _)) if e.as_str() == UNIT_EXISTS)
}

/// `StartTransientUnit`; a unit of the same name left by a daemon that died while the job
/// ran is stopped first, and this start replaces it.
pub(super) async fn start(
    manager: &zbus::Proxy<'_>,
    name: &str,
    props: &[(&'static str, Value<'_>)],
    spec: &Spec,
) -> zbus::Result<()> {
    let mut result = start_once(manager, name, props).await;
    if exists(&result) {
        warn!(rule = %spec.rule, job = spec.job, "{name} is still there from an earlier run; stopping it first");
        let _ = stop(manager, name).await;
        let deadline = Instant::now() + spec.grace + Duration::from_secs(10);
        while Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            result = start_once(manager, name, props).await;
            if !exists(&result) {
                break;
            }
        }
    }
    result
}

pub(super) async fn stop(manager: &zbus::Proxy<'_>, name: &str) -> zbus::Result<()> {
    let _job: OwnedObjectPath = manager.call("StopUnit", &(name, "replace")).await?;
    Ok(())
}

/// What systemd says about the unit.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub active: String,
    pub result: String,
    /// CLD_EXITED (1), CLD_KILLED (2), CLD_DUMPED (3), or 0 before the main process ran.
    pub code: i32,
    pub status: i32,
    pub exited_at: u64,
}

async fn get<T>(props: &zbus::Proxy<'_>, iface: &str, name: &str) -> zbus::Result<T>
where
    T: TryFrom<OwnedValue>,
    T::Error: Into<zbus::Error>,
{
    let v: OwnedValue = props.call("Get", &(iface, name)).await?;
    T::try_from(v).map_err(Into::into)
}

async fn state(props: &zbus::Proxy<'_>) -> zbus::Result<State> {
    Ok(State {
        active: get(props, UNIT, "ActiveState").await?,
        result: get(props, SERVICE, "Result").await?,
        code: get(props, SERVICE, "ExecMainCode").await?,
        status: get(props, SERVICE, "ExecMainStatus").await?,
        exited_at: get(props, SERVICE, "ExecMainExitTimestampMonotonic").await?,
    })
}

/// systemd's own exit statuses (200-243: it could not set up or exec the command).
fn systemd_status(status: i32) -> Option<&'static str> {
    Some(match status {
        200 => "CHDIR: the working directory",
        203 => "EXEC: the program cannot be executed",
        216 => "GROUP: the group",
        217 => "USER: the user does not exist",
        226 => "NAMESPACE: the sandbox (a path in ReadWritePaths or similar does not exist?)",
        201..=243 => "setting up the unit's execution environment",
        _ => return None,
    })
}

/// The job's outcome from how its unit ended.
pub(super) fn outcome(st: &State, program: &str, name: &str) -> Outcome {
    match st.code {
        1 if st.status == 0 => Outcome::Success,
        1 => match systemd_status(st.status).filter(|_| st.result == "exit-code") {
            Some(why) => Outcome::SpawnFailed(format!(
                "systemd could not run {program} in {name}: exit status {} ({why}); journalctl -u {name}",
                st.status
            )),
            None => Outcome::Failed {
                code: Some(st.status),
                signal: None,
            },
        },
        2 | 3 => Outcome::Failed {
            code: None,
            signal: Some(st.status),
        },
        _ => Outcome::SpawnFailed(format!(
            "{name} ended with result {} before its command ran; journalctl -u {name}",
            st.result
        )),
    }
}

/// Ready once the job's `timeout` has passed since `started`; never without one.
pub(super) async fn timed_out(spec: &Spec, started: Instant) {
    match spec.timeout {
        Some(t) => tokio::time::sleep(t.saturating_sub(started.elapsed())).await,
        None => std::future::pending().await,
    }
}

/// Poll the unit until it has ended; a timeout or cancel stops it first, and the outcome
/// is then ours (`Some`), not the unit's.
pub(super) async fn wait(
    conn: &zbus::Connection,
    manager: &zbus::Proxy<'_>,
    name: &str,
    spec: &Spec,
    cancel: &mut watch::Receiver<bool>,
    started: Instant,
) -> Result<(State, Option<Outcome>), String> {
    let path: OwnedObjectPath = manager
        .call("GetUnit", &(name,))
        .await
        .map_err(|e| format!("{name}: GetUnit: {e}"))?;
    let props = zbus::Proxy::new(conn, SYSTEMD, path, "org.freedesktop.DBus.Properties")
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let timeout = timed_out(spec, started);
    tokio::pin!(timeout);
    let mut ours: Option<Outcome> = None;
    let mut stop_deadline: Option<Instant> = None;
    let mut ran = false;
    loop {
        let st = state(&props)
            .await
            .map_err(|e| format!("{name}: reading its state: {e}"))?;
        if matches!(st.active.as_str(), "active" | "activating" | "deactivating") {
            ran = true;
        }
        let ended = st.active == "failed" || (st.active == "inactive" && (ran || st.exited_at > 0));
        if ended {
            return Ok((st, ours));
        }
        if ours.is_none() && !ran && started.elapsed() > START_LIMIT {
            return Err(format!(
                "{name}: systemd has not started it after {START_LIMIT:?}"
            ));
        }
        if let Some(d) = stop_deadline {
            if Instant::now() > d {
                // systemd's own SIGKILL after TimeoutStopSec should have ended it.
                let _: Result<(), _> = manager
                    .call("KillUnit", &(name, "all", nix::libc::SIGKILL))
                    .await;
                stop_deadline = Some(Instant::now() + Duration::from_secs(5));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut timeout, if ours.is_none() => {
                ours = Some(Outcome::TimedOut);
            }
            _ = cancelled(cancel), if ours.is_none() => {
                ours = Some(Outcome::Cancelled);
            }
        }
        if ours.is_some() && stop_deadline.is_none() {
            info!(rule = %spec.rule, job = spec.job, "stopping {name}");
            if let Err(e) = stop(manager, name).await {
                warn!(rule = %spec.rule, job = spec.job, "StopUnit {name}: {e}");
            }
            stop_deadline = Some(Instant::now() + spec.grace + Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: i32, status: i32, result: &str) -> State {
        State {
            active: "inactive".into(),
            result: result.into(),
            code,
            status,
            exited_at: 1,
        }
    }

    #[test]
    fn the_main_process_status_is_the_outcome() {
        let n = "hark-job-1.service";
        assert_eq!(outcome(&st(1, 0, "success"), "/bin/x", n), Outcome::Success);
        assert_eq!(
            outcome(&st(1, 3, "exit-code"), "/bin/x", n),
            Outcome::Failed {
                code: Some(3),
                signal: None
            }
        );
        // SIGTERM from elsewhere is a clean exit to systemd, not to hark.
        assert_eq!(
            outcome(&st(2, 15, "success"), "/bin/x", n),
            Outcome::Failed {
                code: None,
                signal: Some(15)
            }
        );
        assert!(
            matches!(outcome(&st(1, 203, "exit-code"), "/bin/x", n), Outcome::SpawnFailed(m) if m.contains("/bin/x") && m.contains("203"))
        );
        assert!(
            matches!(outcome(&st(0, 0, "resources"), "/bin/x", n), Outcome::SpawnFailed(m) if m.contains("resources"))
        );
    }

    #[test]
    fn stdin_is_a_memfd_read_from_the_start() {
        use std::io::Read;
        let fd = memfd_with(b"{\"a\":1}").unwrap();
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        assert_eq!(s, "{\"a\":1}");
    }
}
