//! Process containment of every job, outside systemd, through the real daemon (`hark
//! serve`): a job is recorded finished only when nothing it started runs any more, and a
//! timeout stops what left the job's process group with `setsid`. Where the tests run as
//! root with cgroup v2, also the cgroup of its own every job gets under a delegated cgroup
//! (the daemon started as systemd starts it with `Delegate=yes`). One test drives the job
//! spawner (`hark __job-spawner`) from here, as the daemon does, to hang up on it.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `hark serve` with one rule on `_hark.example.hello` running `/bin/sh SCRIPT PIDFILE`,
/// and the publish line it printed.
fn serve(dir: &Path, script: &str, run_extra: &str) -> (common::Proc, String) {
    let script_path = dir.join("job.sh");
    std::fs::write(&script_path, script).unwrap();
    let rules = format!(
        "rules:\n  - name: contained\n    match: {{topic: _hark.example.hello}}\n    run:\n      command: [/bin/sh, '{}', '{}']\n      stdin: none\n{run_extra}",
        script_path.display(),
        dir.join("grandchild.pid").display()
    );
    serve_rules(dir, &rules, &[])
}

/// `hark serve` with these rules (and these variables in its environment), and the
/// publish line it printed.
fn serve_rules(dir: &Path, rules: &str, env: &[(&str, &str)]) -> (common::Proc, String) {
    let rules_dir = dir.join("rules.d");
    std::fs::create_dir(&rules_dir).unwrap();
    std::fs::write(rules_dir.join("50-contained.yaml"), rules).unwrap();
    let (submit, publish, replay) = (
        common::free_endpoint(),
        common::free_endpoint(),
        common::free_endpoint(),
    );
    let serve = common::Proc::spawn(
        "serve",
        common::hark_command()
            .current_dir(dir)
            // Outside systemd, also when the tests run in a systemd service.
            .env_remove("INVOCATION_ID")
            .envs(env.iter().copied())
            .args(["serve", "--submit", &submit, "--publish", &publish])
            .args(["--replay", &replay, "--state-dir"])
            .arg(dir.join("state")),
    );
    serve
        .stderr
        .wait_for(
            "jobs: process supervisor (no delegated cgroup: not started by systemd)",
            WAIT,
        )
        .expect("the daemon says which containment jobs get");
    let line = serve
        .stderr
        .wait_for(" publish --relay ", WAIT)
        .expect("serve prints how to publish");
    (serve, line.trim().to_string())
}

fn publish(dir: &Path, line: &str) {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        // Without this host's /etc/hark/hark.yaml, as tests/common's hark_command.
        .env("HARK_CONFIG", "/dev/null")
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{line}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The job once the store says it ended.
fn finished_job(dir: &Path) -> Value {
    common::poll_until(WAIT, || {
        let mut cmd = common::hark_command();
        cmd.args(["jobs", "list", "--json", "--state"])
            .arg(dir.join("state/state.db"));
        let lines = common::run_ok("hark jobs", &mut cmd, WAIT).ok()?;
        let job: Value = serde_json::from_str(lines.first()?).ok()?;
        let state = job["state"].as_str()?;
        (state != "pending" && state != "running").then_some(job)
    })
    .expect("the job ends")
}

fn grandchild(dir: &Path) -> i32 {
    let text = std::fs::read_to_string(dir.join("grandchild.pid")).expect("the grandchild ran");
    text.trim().parse().expect("a pid")
}

fn assert_gone(pid: i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty(),
        "grandchild {pid} runs after its job ended: {stat}"
    );
}

#[test]
fn a_daemonized_grandchild_is_gone_when_its_job_is_recorded_succeeded() {
    let dir = common::temp_dir();
    // Double fork, setsid, stdio closed: then the leader exits 0 at once.
    let script = r#"
( setsid /bin/sh -c 'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec sleep 60' "$1" </dev/null >/dev/null 2>&1 & )
while [ ! -s "$1" ]; do sleep 0.01; done
"#;
    let (_serve, line) = serve(dir.path(), script, "");
    publish(dir.path(), &line);
    let job = finished_job(dir.path());
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_gone(grandchild(dir.path()));
}

#[test]
fn a_job_starts_with_no_signal_blocked_so_a_shell_s_wait_returns() {
    let dir = common::temp_dir();
    // Blocked SIGCHLD (the job spawner's, for its signalfd) would make `wait` hang until the
    // timeout; the mask itself is in /proc.
    let script = r#"
sleep 0 & wait $!
grep '^SigBlk:' /proc/self/status > "$1"
"#;
    let (_serve, line) = serve(dir.path(), script, "      timeout: 10s\n");
    publish(dir.path(), &line);
    let job = finished_job(dir.path());
    assert_eq!(job["state"], "succeeded", "{job}");
    let blocked = std::fs::read_to_string(dir.path().join("grandchild.pid")).expect("the job ran");
    assert_eq!(
        blocked.trim(),
        "SigBlk:\t0000000000000000",
        "the job's signal mask"
    );
}

#[test]
fn a_timeout_kills_a_setsid_grandchild_that_ignores_term() {
    let dir = common::temp_dir();
    let script = r#"
setsid /bin/sh -c 'trap "" TERM; echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; while :; do sleep 1; done' "$1" &
sleep 60
"#;
    let (_serve, line) = serve(
        dir.path(),
        script,
        "      timeout: 1s\n      grace: 200ms\n",
    );
    publish(dir.path(), &line);
    let job = finished_job(dir.path());
    assert_eq!(job["state"], "timed_out", "{job}");
    assert_gone(grandchild(dir.path()));
}

/// What the job spawner does in place of std's `Command`: the exec's error (or the working
/// directory's) as the job's, a bare name looked up in `PATH`, the rule's working
/// directory, and the rule's variables over the daemon's environment; the command's
/// supervisor is the spawner's child.
#[test]
fn the_spawner_reports_why_a_command_cannot_start_and_runs_the_others_as_std_would() {
    let dir = common::temp_dir();
    let d = dir.path();
    let work = d.join("work");
    std::fs::create_dir(&work).unwrap();
    let moved = d.join("moved");
    std::fs::create_dir(&moved).unwrap();
    for name in ["gone", "denied"] {
        let prog = d.join(name);
        std::fs::write(&prog, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let out = d.join("bare.out");
    let rules = format!(
        r#"rules:
  - name: gone
    match: {{topic: _hark.example.hello}}
    run: {{command: ['{d}/gone'], stdin: none}}
  - name: denied
    match: {{topic: _hark.example.hello}}
    run: {{command: ['{d}/denied'], stdin: none}}
  - name: nowhere
    match: {{topic: _hark.example.hello}}
    run: {{command: [/bin/true], workdir: '{moved}', stdin: none}}
  - name: bare
    match: {{topic: _hark.example.hello}}
    run:
      command: [sh, -c, 'echo "$(pwd) $TEST_SET $TEST_KEPT $(cut -d" " -f4 /proc/$PPID/stat)" > "$0"', '{out}']
      workdir: '{work}'
      env: {{TEST_SET: from-the-rule}}
      stdin: none
"#,
        d = d.display(),
        out = out.display(),
        work = work.display(),
        moved = moved.display(),
    );
    let (serve, line) = serve_rules(
        d,
        &rules,
        &[("TEST_SET", "from-the-daemon"), ("TEST_KEPT", "kept")],
    );
    // Valid when the rules were loaded; gone or not executable when the jobs start.
    std::fs::remove_file(d.join("gone")).unwrap();
    std::fs::remove_dir(&moved).unwrap();
    std::fs::set_permissions(
        d.join("denied"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    publish(d, &line);
    let ended = common::poll_until(WAIT, || {
        let all = jobs(d);
        (all.len() == 4
            && all
                .iter()
                .all(|j| j["state"] != "pending" && j["state"] != "running"))
        .then_some(all)
    })
    .expect("the four jobs end");
    let by_rule = |rule: &str| {
        ended
            .iter()
            .find(|j| j["rule"] == rule)
            .unwrap_or_else(|| panic!("a job of {rule}: {ended:?}"))
    };
    let gone = by_rule("gone");
    assert_eq!(gone["state"], "failed", "{gone}");
    let error = gone["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/gone") && error.contains("No such file or directory"),
        "{gone}"
    );
    let denied = by_rule("denied");
    assert_eq!(denied["state"], "failed", "{denied}");
    assert!(
        denied["error"]
            .as_str()
            .is_some_and(|e| e.contains("Permission denied")),
        "{denied}"
    );
    let nowhere = by_rule("nowhere");
    assert_eq!(nowhere["state"], "failed", "{nowhere}");
    let error = nowhere["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("in {}", moved.display()))
            && error.contains("No such file or directory"),
        "{nowhere}"
    );
    let bare = by_rule("bare");
    assert_eq!(bare["state"], "succeeded", "{bare}");
    let printed = std::fs::read_to_string(&out).expect("the bare-name job ran");
    assert_eq!(
        printed.trim(),
        // The job's supervisor is a child of the spawner: the spawner started it, the
        // daemon did not fall back to forking it.
        format!(
            "{} from-the-rule kept {}",
            work.display(),
            spawner_of(serve.id()).expect("the job spawner runs")
        )
    );
}

/// The pid of the daemon's job spawner (`hark __job-spawner`), a child of `daemon`.
fn spawner_of(daemon: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat[stat.rfind(')')? + 4..]
            .split(' ')
            .next()?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (ppid == daemon && cmdline.windows(13).any(|w| w == b"__job-spawner")).then_some(pid)
    })
}

fn jobs(dir: &Path) -> Vec<Value> {
    let mut cmd = common::hark_command();
    cmd.args(["jobs", "list", "--json", "--state"])
        .arg(dir.join("state/state.db"));
    common::run_ok("hark jobs", &mut cmd, WAIT)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Killing the spawner stops the jobs it started (their supervisors' parent-death signal),
/// setsid grandchildren included, and records them; later jobs are forked by the daemon.
#[test]
fn a_killed_job_spawner_stops_its_jobs_and_the_daemon_runs_the_next_ones_itself() {
    let dir = common::temp_dir();
    let script = r#"
if [ -e "$1.ran" ]; then exit 0; fi
touch "$1.ran"
setsid /bin/sh -c 'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec sleep 60' "$1" </dev/null >/dev/null 2>&1 &
sleep 60
"#;
    let (serve, line) = serve(dir.path(), script, "");
    let spawner = common::poll_until(WAIT, || spawner_of(serve.id())).expect("a job spawner");
    publish(dir.path(), &line);
    let pidfile = dir.path().join("grandchild.pid");
    common::poll_until(WAIT, || pidfile.exists().then_some(())).expect("the job runs");
    let pid = grandchild(dir.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the spawner");
    let first = common::poll_until(WAIT, || {
        jobs(dir.path())
            .into_iter()
            .find(|j| j["state"] != "pending" && j["state"] != "running")
    })
    .expect("the first job is recorded ended");
    assert_eq!(first["state"], "failed", "{first}");
    common::poll_until(WAIT, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_err()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("grandchild {pid} outlived the spawner"));
    publish(dir.path(), &line);
    let second = common::poll_until(WAIT, || {
        jobs(dir.path())
            .into_iter()
            .find(|j| j["state"] == "succeeded")
    });
    assert!(second.is_some(), "the next job ran: {:?}", jobs(dir.path()));
}

/// A spawner whose daemon hangs up exits, and the jobs it started stop as when it is
/// killed, a grandchild included. The supervisors run on memory they share with the
/// spawner, so it must not free it as it goes: a daemon killed with -9 closes the socket
/// before the spawner's parent-death signal kills it, and a spawner that freed its jobs
/// on the way out left the supervisor to crash and the grandchild to init (seen in
/// tests/invariants.rs).
#[tokio::test]
async fn a_job_spawner_whose_daemon_hangs_up_leaves_nothing_of_its_jobs_running() {
    use hark::jobs::spawner::{ChildFds, Spawner};
    let dir = common::temp_dir();
    let pidfile = dir.path().join("sleep.pid");
    let spawner =
        Spawner::start_exe(Path::new(env!("CARGO_BIN_EXE_hark"))).expect("the spawner starts");
    let (_out, stdout) = std::io::pipe().expect("a pipe");
    let (_err, stderr) = std::io::pipe().expect("a pipe");
    let argv = [
        "/bin/sh".to_string(),
        "-c".to_string(),
        r#"sleep 60 & echo $! > "$0.tmp"; mv "$0.tmp" "$0"; wait"#.to_string(),
        pidfile.display().to_string(),
    ];
    let fds = ChildFds {
        stdin: None,
        stdout: stdout.into(),
        stderr: stderr.into(),
    };
    let job = spawner
        .spawn(&argv, &[], None, None, Duration::from_secs(1), fds)
        .await
        .unwrap_or_else(|_| panic!("the spawner runs the job"));
    common::poll_until(WAIT, || pidfile.exists().then_some(())).expect("the job runs");
    let sleep: i32 = std::fs::read_to_string(&pidfile)
        .expect("the pid file")
        .trim()
        .parse()
        .expect("a pid");
    spawner.hang_up().expect("hang up");
    for (pid, what) in [
        (sleep, "the job's grandchild"),
        (job.pid as i32, "the supervisor"),
    ] {
        common::poll_until(WAIT, || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or dead and not yet reaped by whoever its parent is now.
            (stat.is_empty() || stat.contains(") Z ")).then_some(())
        })
        .unwrap_or_else(|| panic!("{what} ({pid}) outlived the spawner"));
    }
}

/// A cgroup made for one test and removed (with what is left in it) when dropped.
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = hark::jobs::cgroup::remove(&self.0) {
            eprintln!("cannot remove the test cgroup {}: {e}", self.0.display());
        }
    }
}

/// A child of this process's cgroup marked delegated as systemd marks one with
/// `Delegate=yes`, or why the machine cannot give one (not root, no writable cgroup v2).
fn delegated_test_cgroup() -> Result<TestCgroup, String> {
    use std::os::unix::ffi::OsStrExt;
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    let own = hark::jobs::cgroup::own_dir()?;
    let dir = own.join(format!("hark-test-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cgroup = TestCgroup(dir);
    let path =
        std::ffi::CString::new(cgroup.0.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: setxattr reads the path, the name and one byte of value.
    let r = unsafe {
        nix::libc::setxattr(
            path.as_ptr(),
            c"user.delegate".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "cannot mark {} delegated: {}",
            cgroup.0.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(cgroup)
}

/// Publish the hello event that starts job number `start` of the contained rule (its
/// grandchild's pid file removed first) and wait until that job is recorded ended.
fn start_and_wait(dir: &Path, publish_line: &str, pidfile: &Path, start: usize) -> Value {
    let _ = std::fs::remove_file(pidfile);
    publish(dir, publish_line);
    common::poll_until(WAIT, || {
        let all = jobs(dir);
        (all.len() == start).then_some(())?;
        let j = all.into_iter().max_by_key(|j| j["id"].as_i64())?;
        (j["state"] != "pending" && j["state"] != "running").then_some(j)
    })
    .unwrap_or_else(|| panic!("job {start} is not recorded ended"))
}

/// The cgroup (`0::` line) a process was in, as it wrote it.
fn cgroup_line(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("the grandchild wrote its cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string()
}

/// The daemon path under a delegated cgroup, as under systemd with `Delegate=yes`
/// (`INVOCATION_ID` set, the daemon started in a cgroup marked delegated): it says so, moves
/// into its leaf, removes a leftover job cgroup with what runs in it, and every job runs in
/// `job-<id>`, a setsid grandchild included, which is gone on a timeout and after a normal
/// end, with the job's cgroup, before the job is recorded. Skipped, saying why, where this
/// process cannot make such a cgroup.
#[test]
fn under_a_delegated_cgroup_every_job_and_its_setsid_grandchild_get_a_cgroup_of_their_own() {
    let cgroup = match delegated_test_cgroup() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipped: no delegated cgroup for the test ({why})");
            return;
        }
    };
    let base = cgroup.0.clone();
    // Left by "an earlier daemon": a job cgroup with a process in it.
    let leftover = base.join("job-999999");
    std::fs::create_dir(&leftover).expect("mkdir the leftover cgroup");
    let procs = leftover.join("cgroup.procs");
    let mut sleeper = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("echo $$ > '{}' && exec sleep 60", procs.display()))
        .spawn()
        .expect("sh");
    common::poll_until(WAIT, || {
        let text = std::fs::read_to_string(&procs).ok()?;
        (!text.trim().is_empty()).then_some(())
    })
    .expect("the leftover's process joined it");

    let dir = common::temp_dir();
    // The grandchild writes its cgroup, then its pid; the leader times out (first start) or
    // exits at once (second start), leaving the grandchild, which ignores SIGTERM.
    let script = r#"
setsid /bin/sh -c 'trap "" TERM; cat /proc/self/cgroup > "$0.cgroup"; echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; while :; do sleep 1; done' "$1" </dev/null >/dev/null 2>&1 &
while [ ! -s "$1" ]; do sleep 0.01; done
if [ -e "$1.first" ]; then exit 0; fi
touch "$1.first"
sleep 60
"#;
    let script_path = dir.path().join("job.sh");
    std::fs::write(&script_path, script).unwrap();
    let rules = dir.path().join("rules.d");
    std::fs::create_dir(&rules).unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    std::fs::write(
        rules.join("50-contained.yaml"),
        format!(
            "rules:\n  - name: contained\n    match: {{topic: _hark.example.hello}}\n    run:\n      command: [/bin/sh, '{}', '{}']\n      stdin: none\n      timeout: 2s\n      grace: 200ms\n",
            script_path.display(),
            pidfile.display()
        ),
    )
    .unwrap();
    let (submit, publish_ep, replay) = (
        common::free_endpoint(),
        common::free_endpoint(),
        common::free_endpoint(),
    );
    let mut cmd = common::hark_command();
    cmd.current_dir(dir.path())
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .args(["serve", "--submit", &submit, "--publish", &publish_ep])
        .args(["--replay", &replay, "--state-dir"])
        .arg(dir.path().join("state"));
    let join = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
        base.join("cgroup.procs").as_os_str(),
    ))
    .unwrap();
    // SAFETY: between fork and exec: open, write and close on a path built before.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let fd = nix::libc::open(join.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
            if fd < 0 || nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            nix::libc::close(fd);
            Ok(())
        });
    }
    let serve = common::Proc::spawn("serve", &mut cmd);
    serve
        .stderr
        .wait_for("removed the leftover cgroup", WAIT)
        .expect("the leftover job cgroup is removed at start");
    let said = serve
        .stderr
        .wait_for("jobs: own cgroup under", WAIT)
        .expect("the daemon says which containment jobs get");
    assert!(said.contains(&base.display().to_string()), "{said}");
    assert!(!leftover.exists(), "{} is still there", leftover.display());
    let status = sleeper.wait().expect("the leftover's process");
    assert!(
        !status.success(),
        "the leftover's process was killed: {status}"
    );
    let daemon_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", serve.id())).unwrap();
    assert!(
        daemon_cgroup.lines().any(|l| l.ends_with(&format!(
            "{}/daemon",
            base.file_name().unwrap().to_string_lossy()
        ))),
        "the daemon moved into its leaf: {daemon_cgroup}"
    );
    let line = serve
        .stderr
        .wait_for(" publish --relay ", WAIT)
        .expect("serve prints how to publish")
        .trim()
        .to_string();

    for (start, want) in [(1, "timed_out"), (2, "succeeded")] {
        let job = start_and_wait(dir.path(), &line, &pidfile, start);
        assert_eq!(job["state"], want, "start {start}: {job}");
        let id = job["id"].as_i64().expect("an id");
        let own = cgroup_line(&dir.path().join("grandchild.pid.cgroup"));
        assert!(
            own.ends_with(&format!("/job-{id}")),
            "start {start}: the setsid grandchild ran in {own}, not in job-{id}"
        );
        assert_gone(grandchild(dir.path()));
        let job_dir = base.join(format!("job-{id}"));
        assert!(
            !job_dir.exists(),
            "start {start}: {} outlived its job",
            job_dir.display()
        );
    }

    // No room for another cgroup (the subtree's limit: the daemon's leaf only): the third
    // job cannot get one, runs all the same, says so in its output, and its supervisor
    // alone still stops the grandchild before the job is recorded.
    std::fs::write(base.join("cgroup.max.descendants"), "1").expect("limit the subtree");
    let job = start_and_wait(dir.path(), &line, &pidfile, 3);
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["id"].as_i64().expect("an id");
    let tail = job["output_tail"].as_str().unwrap_or_default();
    assert!(
        tail.contains(&format!(
            "hark: cannot put this job in its cgroup {}",
            base.join(format!("job-{id}")).display()
        )) && tail.contains("only its supervisor contains it"),
        "the job's output says it has no cgroup: {job}"
    );
    let own = cgroup_line(&dir.path().join("grandchild.pid.cgroup"));
    assert!(
        own.ends_with("/daemon"),
        "without a cgroup of its own the grandchild ran in {own}, not in the daemon's leaf"
    );
    assert_gone(grandchild(dir.path()));
}
