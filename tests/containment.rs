//! Process containment of every job, outside systemd, through the real daemon (`hark
//! serve`): a job is recorded finished only when nothing it started runs any more, and a
//! timeout stops what left the job's process group with `setsid`.

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
    let rules = dir.join("rules.d");
    std::fs::create_dir(&rules).unwrap();
    let rule = format!(
        "rules:\n  - name: contained\n    match: {{topic: _hark.example.hello}}\n    run:\n      command: [/bin/sh, '{}', '{}']\n      stdin: none\n{run_extra}",
        script_path.display(),
        dir.join("grandchild.pid").display()
    );
    std::fs::write(rules.join("50-contained.yaml"), rule).unwrap();
    let (submit, publish, replay) = (
        common::free_endpoint(),
        common::free_endpoint(),
        common::free_endpoint(),
    );
    let serve = common::Proc::spawn(
        "serve",
        common::hark_command()
            .current_dir(dir)
            .args(["serve", "--submit", &submit, "--publish", &publish])
            .args(["--replay", &replay, "--state-dir"])
            .arg(dir.join("state")),
    );
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
