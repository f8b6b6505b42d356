//! `hark unit-starter`: the root side of `run.unit` for a trigger daemon that does not run
//! as root (the packaged one runs as `hark`). hark-unit-starter.socket (root's, group
//! hark, 0660, `Accept=yes`) starts one per job, with the daemon's connection on stdin.
//!
//! Why a starter rather than a polkit grant to start `hark-job-*` units: polkit sees
//! neither a transient unit's `User=` nor its command (and systemd before 257 passes it
//! not even the unit's name), so any such grant would let user hark run anything as root.
//! The starter takes no command from the daemon. It is handed the job as it was filed
//! (rule name, attempt, reason, the events as received) and renders it again from the
//! rule files root's hark.yaml names, which it reads itself and trusts only when root (or
//! the user it runs as) owns them and nobody else may write them. A rule without
//! `run.unit`, one the events do not match, or a user `trigger.unit_users` does not allow,
//! is refused. What user hark can still do: start a job of such a rule with events it
//! made up (the starter cannot check signatures that admission checked long ago, nor that
//! the events were received at all), so a rule that runs as root should use what the
//! event says only as arguments its command checks.

use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::systemd::{self, unit_name, UnitFds};
use super::wire::{recv_fds, Reply, Request, MAX_REQUEST, STOP};
use crate::config::{Config, DEFAULT_PATH};
use crate::event::Event;
use crate::jobs::launch::{self, OutputLimits, Reason, Spec};

/// A daemon that connected but sends no request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The job, rendered from root's rule files, and the user its unit runs as.
#[derive(Debug)]
pub struct Decided {
    pub spec: Spec,
    pub user: String,
}

/// Refuse `path` unless it and every directory above it are owned by root or by the user
/// the starter runs as, and writable by nobody else (a sticky directory such as /tmp may
/// be: nobody else can replace what is in it).
pub fn check_owned(path: &Path) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let full = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut at: Option<&Path> = Some(&full);
    while let Some(p) = at {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!(
                "{} is owned by uid {}, not by root: the unit starter only trusts files root owns ({})",
                p.display(),
                meta.uid(),
                full.display()
            ));
        }
        // What is below a sticky directory was checked to be root's: nobody else can
        // rename or remove it there.
        let sticky = meta.is_dir() && meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(format!(
                "{} is writable by others (mode {:o}): the unit starter only trusts files nobody but root can change ({})",
                p.display(),
                meta.mode() & 0o7777,
                full.display()
            ));
        }
        at = p.parent();
    }
    Ok(())
}

fn user_name(uid: u32) -> Result<String, String> {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => Ok(u.name),
        Ok(None) => Err(format!("uid {uid} has no user name")),
        Err(e) => Err(format!("looking up uid {uid}: {e}")),
    }
}

/// Render `req` from the rule files `config` names, as the daemon would have, or say why
/// not. `peer_uid` is who asked: a unit without `run.unit.user` runs as that user.
pub fn decide(req: &Request, config: &Path, peer_uid: u32) -> Result<Decided, String> {
    let cfg = if config.exists() {
        check_owned(config)?;
        Config::load(Some(config)).map_err(|e| e.to_string())?
    } else if config == Path::new(DEFAULT_PATH) {
        Config::default()
    } else {
        return Err(format!("{}: no such file", config.display()));
    };
    crate::rules::unit::set_allowed_users(&cfg.trigger.unit_users);
    let load = crate::rules::load::load_dirs(&cfg.trigger.rules);
    let dirs: Vec<String> = cfg
        .trigger
        .rules
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let Some(rule) = load.set.rule(&req.rule) else {
        let refused: Vec<String> = load
            .refusals()
            .map(|r| r.to_string().trim_end().to_string())
            .collect();
        let refused = if refused.is_empty() {
            String::new()
        } else {
            format!("; refused there: {}", refused.join("; "))
        };
        return Err(format!(
            "rule {} is not among the rules in {} (trigger.rules of {}){refused}",
            req.rule,
            dirs.join(", "),
            config.display()
        ));
    };
    check_owned(&rule.source.file)?;
    let Some(unit) = &rule.run.unit else {
        return Err(format!(
            "rule {} ({}) has no run.unit: its jobs run as the daemon's own user",
            rule.name, rule.source
        ));
    };
    if req.job <= 0 {
        return Err(format!("job id {} is not a job's", req.job));
    }
    let user = match &unit.user {
        Some(u) if !cfg.trigger.unit_users.contains(u) => {
            return Err(format!(
                "rule {}: run.unit.user {u} is not in trigger.unit_users of {}",
                rule.name,
                config.display()
            ))
        }
        Some(u) => u.clone(),
        None => user_name(peer_uid)?,
    };
    let events = events_of(req, rule)?;
    let limits = OutputLimits {
        log_limit: cfg.trigger.log_limit,
        tail_limit: cfg.trigger.tail_limit,
    };
    let mut spec = launch::prepare(rule, req.job, req.attempt, req.reason, &events, limits)
        .map_err(|e| e.to_string())?;
    // The daemon keeps the job's clock; it sends `stop` (or closes) on a timeout.
    spec.timeout = None;
    Ok(Decided { spec, user })
}

/// The job's events, each of which must match the rule; a fallback run's stand-in.
fn events_of(req: &Request, rule: &crate::rules::Rule) -> Result<Vec<Arc<Event>>, String> {
    let Some(first) = req.events.first() else {
        return Err("a job without events".into());
    };
    if req.reason == Reason::Fallback {
        if rule.fallback.is_none() {
            return Err(format!("rule {} has no fallback schedule", rule.name));
        }
        return Ok(vec![Arc::new(rule.fallback_event(&first.uuid))]);
    }
    let mut events = Vec::with_capacity(req.events.len());
    for stored in &req.events {
        let uuid = stored.uuid.clone();
        let event = stored
            .clone()
            .into_event()
            .map_err(|e| format!("event {uuid}: {e}"))?;
        if let Some(why) = rule.why_not(&event) {
            return Err(format!(
                "event {uuid} does not match rule {}: {why}",
                rule.name
            ));
        }
        events.push(Arc::new(event));
    }
    Ok(events)
}

/// Read the descriptors and the request line.
fn read_request(conn: &UnixStream) -> Result<(Vec<OwnedFd>, Request), String> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let fds = recv_fds(conn.as_fd()).map_err(|e| format!("reading the request: {e}"))?;
    let mut line = Vec::new();
    std::io::BufReader::new(conn.take(MAX_REQUEST as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    if line.len() > MAX_REQUEST {
        return Err(format!("the request is larger than {MAX_REQUEST} bytes"));
    }
    let req: Request =
        serde_json::from_slice(&line).map_err(|e| format!("a malformed request: {e}"))?;
    if fds.len() != 2 {
        return Err(format!(
            "the request came with {} descriptors, not the unit's stdout and stderr",
            fds.len()
        ));
    }
    Ok((fds, req))
}

fn send(mut conn: &UnixStream, reply: &Reply) {
    // A daemon that went away reads nothing; the unit is stopped all the same.
    let _ = conn.write_all(&reply.line());
}

/// Serve one connection: the request, the unit, its end. Errors are the daemon's
/// (refused, logged) unless the connection itself is unusable.
pub fn serve(conn: UnixStream, config: &Path) -> Result<(), String> {
    let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("who is asking (SO_PEERCRED): {e}"))?;
    let (fds, req) = match read_request(&conn) {
        Ok(r) => r,
        Err(why) => {
            warn!(
                peer_pid = peer.pid(),
                peer_uid = peer.uid(),
                "refused: {why}"
            );
            send(&conn, &Reply::Refused { why });
            return Ok(());
        }
    };
    let decided = match decide(&req, config, peer.uid()) {
        Ok(d) => d,
        Err(why) => {
            warn!(rule = %req.rule, job = req.job, peer_pid = peer.pid(), peer_uid = peer.uid(), "refused: {why}");
            send(&conn, &Reply::Refused { why });
            return Ok(());
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(run_unit(conn, decided, fds, peer.pid()))
}

async fn run_unit(
    conn: UnixStream,
    decided: Decided,
    fds: Vec<OwnedFd>,
    peer_pid: i32,
) -> Result<(), String> {
    let Decided { spec, user } = decided;
    let name = unit_name(spec.job);
    let refuse = |why: String| {
        warn!(rule = %spec.rule, job = spec.job, "refused: {why}");
        send(&conn, &Reply::Refused { why });
        Ok(())
    };
    let bus = match zbus::Connection::system().await {
        Ok(c) => c,
        Err(e) => return refuse(format!("cannot reach systemd on the system bus: {e}")),
    };
    let manager = match systemd::manager(&bus).await {
        Ok(m) => m,
        Err(e) => return refuse(format!("systemd's manager: {e}")),
    };
    let stdin = if spec.stdin.is_null() {
        None
    } else {
        match systemd::memfd_with(&spec.stdin.bytes()) {
            Ok(fd) => Some(fd),
            Err(e) => return refuse(format!("the event's memfd: {e}")),
        }
    };
    {
        let unit_fds = UnitFds {
            stdin: stdin.as_ref().map(|f| f.as_fd()),
            stdout: fds[0].as_fd(),
            stderr: fds[1].as_fd(),
        };
        let props = match systemd::properties(&spec, &user, unit_fds) {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        if let Err(e) = systemd::start(&manager, &name, &props, &spec).await {
            return refuse(format!("systemd did not start {name}: {e}"));
        }
    }
    // systemd holds its own copies of the unit's descriptors now.
    drop(stdin);
    drop(fds);
    info!(rule = %spec.rule, job = spec.job, unit = %name, user = %user, peer_pid, "started as a transient unit");
    send(
        &conn,
        &Reply::Started {
            unit: name.clone(),
            user,
        },
    );
    conn.set_nonblocking(true).map_err(|e| e.to_string())?;
    let conn = tokio::net::UnixStream::from_std(conn).map_err(|e| e.to_string())?;
    let (rd, mut wr) = conn.into_split();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let listener = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rd).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.trim() == STOP => break,
                Ok(Some(_)) => continue,
                // Closed: the daemon is gone, and nothing of the job may run on unwatched.
                Ok(None) | Err(_) => break,
            }
        }
        let _ = stop_tx.send(true);
    });
    let reply =
        match systemd::wait(&bus, &manager, &name, &spec, &mut stop_rx, Instant::now()).await {
            Ok((state, ours)) => Reply::Ended {
                state,
                stopped: ours.is_some(),
            },
            Err(why) => {
                let _ = systemd::stop(&manager, &name).await;
                warn!(rule = %spec.rule, job = spec.job, "{why}");
                Reply::Lost { why }
            }
        };
    listener.abort();
    let _ = wr.write_all(&reply.line()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::store::StoredEvent;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A directory nobody else may write (tempdir's is 0700; /tmp above it is sticky).
    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    const RULES: &str = "rules:\n  - name: root-job\n    match: {topic: t.upload, where: {data.suite: landing}}\n    run:\n      command: [/usr/bin/piuparts, '--distribution=${data.suite}']\n      unit: {user: root, properties: {ProtectSystem: strict}}\n  - name: plain\n    match: {topic: t.upload}\n    run: {command: [/bin/true]}\n";

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = private_dir();
        let rules = dir.path().join("rules.d");
        std::fs::create_dir(&rules).unwrap();
        std::fs::set_permissions(&rules, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(rules.join("60-root.yaml"), RULES).unwrap();
        let config = dir.path().join("hark.yaml");
        std::fs::write(
            &config,
            format!("trigger:\n  rules: [{}]\n", rules.display()),
        )
        .unwrap();
        (dir, config)
    }

    fn event(topic: &str, suite: &str) -> StoredEvent {
        let json = format!(
            r#"{{"tag":"{topic}","uuid":"u-{suite}","format":"1.0","time":"2026-12-01T00:00:00Z","data":{{"suite":"{suite}"}}}}"#
        );
        StoredEvent {
            uuid: format!("u-{suite}"),
            topic: topic.into(),
            signers: vec![],
            json,
        }
    }

    fn request(rule: &str, events: Vec<StoredEvent>) -> Request {
        Request {
            job: 4,
            rule: rule.into(),
            attempt: 1,
            reason: Reason::Event,
            events,
        }
    }

    #[test]
    fn the_job_is_rendered_from_root_s_rule_files() {
        let (_dir, config) = setup();
        let me = nix::unistd::geteuid().as_raw();
        let d = decide(
            &request("root-job", vec![event("t.upload", "landing")]),
            &config,
            me,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.user, "root");
        assert_eq!(d.spec.argv, ["/usr/bin/piuparts", "--distribution=landing"]);
        assert_eq!(d.spec.timeout, None, "the daemon keeps the clock");
        assert!(d.spec.env.contains(&("HARK_JOB".into(), "4".into())));
        assert!(d.spec.stdin.bytes().starts_with(b"{\"tag\":\"t.upload\""));
    }

    #[test]
    fn what_root_s_files_do_not_give_is_refused() {
        let (_dir, config) = setup();
        let me = nix::unistd::geteuid().as_raw();
        let refused = |req: Request| decide(&req, &config, me).unwrap_err();
        let e = refused(request("nonesuch", vec![event("t.upload", "landing")]));
        assert!(e.contains("rule nonesuch is not among the rules in"), "{e}");
        let e = refused(request("plain", vec![event("t.upload", "landing")]));
        assert!(e.contains("has no run.unit"), "{e}");
        let e = refused(request("root-job", vec![event("t.upload", "sid")]));
        assert!(
            e.contains("event u-sid does not match rule root-job"),
            "{e}"
        );
        let e = refused(request("root-job", vec![event("t.other", "landing")]));
        assert!(e.contains("does not match rule root-job: topic"), "{e}");
        let e = refused(request("root-job", vec![]));
        assert!(e.contains("without events"), "{e}");
    }

    #[test]
    fn files_others_may_write_are_not_trusted() {
        let (dir, config) = setup();
        let me = nix::unistd::geteuid().as_raw();
        let refusal = || {
            decide(
                &request("root-job", vec![event("t.upload", "landing")]),
                &config,
                me,
            )
            .unwrap_err()
        };
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let file = dir.path().join("rules.d/60-root.yaml");
        let rules = dir.path().join("rules.d");
        for (path, mode, want) in [
            (
                &file,
                0o664,
                "60-root.yaml is writable by others (mode 664)",
            ),
            (&rules, 0o777, "rules.d is writable by others (mode 777)"),
            (&config, 0o666, "hark.yaml is writable by others (mode 666)"),
        ] {
            chmod(path, mode);
            let e = refusal();
            assert!(e.contains(want), "{e}");
            chmod(path, if path.is_dir() { 0o755 } else { 0o644 });
        }
        if me == 0 {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
            let e = refusal();
            assert!(
                e.contains("60-root.yaml is owned by uid 65534, not by root"),
                "{e}"
            );
        }
    }
}
