//! Habits every command line tool has: a closed pipe ends it quietly.

mod common;

use std::io::Read;
use std::process::Stdio;

use hark::jobs::store::Store;

#[test]
fn a_closed_pipe_ends_hark_jobs_quietly() {
    let dir = common::temp_dir();
    let state = dir.path().join("state.db");
    let mut store = Store::open(&state).expect("state");
    // Far more output than a pipe buffers.
    store.begin().expect("begin");
    for n in 0..5_000 {
        store
            .insert_pending("mirror-sync", &format!("key-{n}"), 0, &[])
            .expect("job");
    }
    store.commit().expect("commit");
    drop(store);
    for _ in 0..5 {
        let mut child = common::hark_command()
            .args(["jobs", "list", "--limit", "5000", "--state"])
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hark jobs");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut first = [0u8; 64];
        stdout.read_exact(&mut first).expect("some output");
        drop(stdout);
        let out = child.wait_with_output().expect("exit");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_ne!(out.status.code(), Some(101), "{stderr}");
        assert!(stderr.trim().is_empty(), "nothing said: {stderr}");
    }
}

#[test]
fn a_secret_key_every_user_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::temp_dir();
    let keys = common::test_keys(dir.path());
    let secret = dir.path().join("exposed.key_secret");
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let publish = |key: &std::path::Path| {
        let out = common::hark_command()
            .args(["publish", "--no-spool", "--timeout", "1s", "--relay"])
            .arg(common::free_endpoint())
            .arg("--key")
            .arg(key)
            .args(["_lk.test.keys", "--data", "{}"])
            .output()
            .expect("hark publish");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::copy(&keys.relay_secret, &secret).unwrap();
    mode(&secret, 0o644);
    let stderr = publish(&secret);
    assert!(
        stderr.contains("open to every user (mode 0644)"),
        "{stderr}"
    );
    // The package's layout, root:hark 0640, is fine.
    mode(&secret, 0o640);
    assert!(
        !publish(&secret).contains("secret key"),
        "no warning at 0640"
    );
}

#[test]
fn a_damaged_job_row_is_reported_with_its_id_never_guessed() {
    let dir = common::temp_dir();
    let state = dir.path().join("state.db");
    let mut store = Store::open(&state).expect("state");
    let bad_state = store.insert_pending("r", "", 0, &[]).expect("job");
    let bad_argv = store.insert_pending("r", "", 0, &[]).expect("job");
    drop(store);
    let conn = rusqlite::Connection::open(&state).expect("sqlite");
    conn.execute("UPDATE jobs SET state = 'bogus' WHERE id = ?1", [bad_state])
        .expect("corrupt state");
    conn.execute(
        "UPDATE jobs SET argv = 'not json' WHERE id = ?1",
        [bad_argv],
    )
    .expect("corrupt argv");
    drop(conn);
    let show = |id: i64| {
        let out = common::hark_command()
            .args(["jobs", "show", &id.to_string(), "--state"])
            .arg(&state)
            .output()
            .expect("hark jobs show");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = show(bad_state);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("job {bad_state}: unknown state \"bogus\"")),
        "{stderr}"
    );
    let (ok, stderr) = show(bad_argv);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "job {bad_argv}: its argv \"not json\" is not a JSON list"
        )),
        "{stderr}"
    );
}

fn jobs_list(state: &std::path::Path, args: &[&str]) -> Vec<String> {
    let lines = common::run_ok(
        "jobs",
        common::hark_command()
            .arg("jobs")
            .args(args)
            .arg("--state")
            .arg(state),
        std::time::Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Without the header line.
    lines.into_iter().skip(1).collect()
}

#[test]
fn hark_jobs_filters_by_rule_and_age_and_takes_limit_without_list() {
    let dir = common::temp_dir();
    let state = dir.path().join("state.db");
    let mut store = Store::open(&state).expect("state");
    let old = store.insert_pending("mirror", "old", 0, &[]).expect("job");
    for key in ["a", "b", "c"] {
        store.insert_pending("mirror", key, 0, &[]).expect("job");
    }
    store.insert_pending("lintian", "x", 0, &[]).expect("job");
    drop(store);
    let conn = rusqlite::Connection::open(&state).expect("sqlite");
    let day_ago = hark::jobs::now_ms() - 24 * 3600 * 1000;
    conn.execute("UPDATE jobs SET created = ?1 WHERE id = ?2", (day_ago, old))
        .expect("age it");
    drop(conn);
    let rules = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| l.split_whitespace().nth(2).unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(rules(&jobs_list(&state, &["--rule", "mirror"])).len(), 4);
    assert_eq!(
        rules(&jobs_list(&state, &["--rule", "mirror", "--since", "1h"])),
        ["mirror", "mirror", "mirror"]
    );
    assert_eq!(jobs_list(&state, &["--limit", "2"]).len(), 2);
    assert_eq!(
        rules(&jobs_list(&state, &["list", "--rule", "lintian"])),
        ["lintian"]
    );
}

#[test]
fn hark_jobs_finds_the_state_of_hark_serve() {
    if std::path::Path::new("/var/lib/hark/state.db").exists() {
        println!("SKIPPED: a system daemon's state exists here and comes first");
        return;
    }
    let dir = common::temp_dir();
    let serve_state = dir.path().join("hark/state.db");
    std::fs::create_dir_all(serve_state.parent().unwrap()).unwrap();
    let mut store = Store::open(&serve_state).expect("state");
    store.insert_pending("hello", "", 0, &[]).expect("job");
    drop(store);
    let out = common::hark_command()
        .args(["jobs", "--config", "/dev/null"])
        .env("XDG_STATE_HOME", dir.path())
        .output()
        .expect("hark jobs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("hello"), "{stdout}");
}

#[test]
fn hark_status_shows_each_rule_s_last_run_the_waiting_jobs_and_the_relays() {
    let dir = common::temp_dir();
    let rules = dir.path().join("rules.d");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("50-mirror.yaml"),
        "rules:\n  - name: mirror\n    match: {topic: _lk.archive.x}\n    run: {command: [/bin/true]}\n\
         \n  - name: nightly\n    match: {topic: _lk.archive.y}\n    run: {command: [/bin/true]}\n    fallback: {every: 6h}\n",
    )
    .unwrap();
    let state = dir.path().join("state.db");
    let mut store = Store::open(&state).expect("state");
    let ran = store.insert_pending("mirror", "", 0, &[]).expect("job");
    store.mark_running(ran, &["/bin/true".into()]).expect("run");
    store
        .finish(ran, hark::jobs::store::State::Failed, Some(3), None, None)
        .expect("finish");
    let quiet_until = hark::jobs::now_ms() + 3_600_000;
    let waiting = store
        .insert_pending("mirror", "repo", quiet_until, &[])
        .expect("job");
    store.save_relay_seq("relay-1", "epoch-1", 42).expect("seq");
    drop(store);
    let out = common::hark_command()
        .args(["status", "--json", "--state"])
        .arg(&state)
        .arg("--rules")
        .arg(&rules)
        .output()
        .expect("hark status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mirror = &status["rules"][0];
    assert_eq!(mirror["name"], "mirror");
    assert!(
        mirror["source"]
            .as_str()
            .unwrap()
            .ends_with("50-mirror.yaml:2"),
        "{mirror}"
    );
    assert_eq!(mirror["last"]["state"], "failed");
    assert_eq!(mirror["last"]["exit_code"], 3);
    let nightly = &status["rules"][1];
    assert_eq!(nightly["last"], serde_json::Value::Null, "never ran");
    assert!(nightly["fallback_due"].is_i64(), "{nightly}");
    let job = &status["jobs"][0];
    assert_eq!(job["id"], waiting);
    assert!(
        job["waiting"]
            .as_str()
            .unwrap()
            .starts_with("coalesce quiet period"),
        "{job}"
    );
    assert_eq!(status["relays"][0]["relay"], "relay-1");
    assert_eq!(status["relays"][0]["seq"], 42);
    // The table says the same for a person.
    let out = common::hark_command()
        .args(["status", "--state"])
        .arg(&state)
        .arg("--rules")
        .arg(&rules)
        .output()
        .expect("hark status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mirror") && text.contains("failed"), "{text}");
    assert!(text.contains("relay-1"), "{text}");
}

/// Every man page `hark generate-assets` writes (hark-rules(5), rendered from
/// docs/rules.md, among them) formats without a single warning from man(1).
#[test]
fn every_generated_man_page_formats_without_warnings() {
    if std::process::Command::new("man")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no man(1) here (Debian package man-db)");
        return;
    }
    let dir = common::temp_dir();
    common::run_ok(
        "generate-assets",
        common::hark_command()
            .arg("generate-assets")
            .arg(dir.path()),
        std::time::Duration::from_secs(30),
    )
    .expect("generate-assets");
    let pages: Vec<_> = std::fs::read_dir(dir.path().join("man"))
        .expect("man pages")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(
        pages.iter().any(|p| p.ends_with("hark-rules.5")),
        "{pages:?}"
    );
    for page in pages {
        let out = std::process::Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .output()
            .expect("man");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{}: {stderr}",
            page.display()
        );
    }
}

#[test]
fn hark_config_names_the_configuration_file_and_config_overrides_it() {
    let dir = common::temp_dir();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "relay:\n  no_such_key: 1\n").unwrap();
    for daemon in ["relay", "trigger"] {
        let out = common::hark_command()
            .arg(daemon)
            .env("HARK_CONFIG", &broken)
            .output()
            .expect("hark daemon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{daemon}: {stderr}");
        assert!(
            stderr.contains(&format!("{}:2:3", broken.display())),
            "{daemon}: the error names HARK_CONFIG's file and line: {stderr}"
        );
    }

    let out = common::hark_command()
        .args(["rules", "check", "--config", "/dev/null"])
        .arg(dir.path().join("no-rules.d"))
        .env("HARK_CONFIG", &broken)
        .output()
        .expect("hark rules check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("broken.yaml"),
        "--config comes before HARK_CONFIG: {stderr}"
    );
}
