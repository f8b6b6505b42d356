//! `hark serve`, as README starts it: the publish command it prints works when copied
//! literally into another shell, even with no `hark` on PATH, and fires the example rule.

mod common;

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// A PATH without hark on it, as after `cargo run --release -- serve`.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `hark serve` in a fresh directory with `rules` as `rules.d/`, and the publish line it
/// printed.
fn serve(rules: &[(&str, &str)]) -> (common::TempDir, common::Proc, String) {
    serve_with(common::temp_dir(), rules, &[])
}

/// [`serve`] in `dir`, with `extra` flags.
fn serve_with(
    dir: common::TempDir,
    rules: &[(&str, &str)],
    extra: &[&str],
) -> (common::TempDir, common::Proc, String) {
    let rules_dir = dir.path().join("rules.d");
    std::fs::create_dir(&rules_dir).unwrap();
    for (name, text) in rules {
        std::fs::write(rules_dir.join(name), text).unwrap();
    }
    let (submit, publish, replay) = (
        common::free_endpoint(),
        common::free_endpoint(),
        common::free_endpoint(),
    );
    let serve = common::Proc::spawn(
        "serve",
        common::hark_command()
            .current_dir(dir.path())
            .env("PATH", PATH)
            .args(["serve", "--submit", &submit, "--publish", &publish])
            .args(["--replay", &replay, "--state-dir"])
            .arg(dir.path().join("state"))
            .args(extra),
    );
    let line = serve
        .stderr
        .wait_for(" publish --relay ", WAIT)
        .expect("serve prints how to publish");
    (dir, serve, line.trim().to_string())
}

fn sh(dir: &common::TempDir, line: &str) {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .env("PATH", PATH)
        // The line as printed, without this host's /etc/hark/hark.yaml (tests/common).
        .env("HARK_CONFIG", "/dev/null")
        .current_dir(dir.path())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{line}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_printed_publish_command_works_as_printed_and_fires_the_example_rule() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let hello = std::fs::read_to_string(repo.join("rules.d/10-hello.yaml")).unwrap();
    let (dir, serve, line) = serve(&[("10-hello.yaml", &hello)]);
    sh(&dir, &line);
    serve
        .stderr
        .wait_for("hello, world", WAIT)
        .expect("the example rule ran");
}

#[test]
fn a_failed_job_is_logged_with_its_exit_status_as_a_number() {
    let rule = "rules:\n  - name: fails\n    match: {topic: _hark.example.hello}\n    run: {command: [/bin/sh, -c, 'exit 3'], stdin: none}\n";
    let (dir, serve, line) = serve(&[("10-fails.yaml", rule)]);
    sh(&dir, &line);
    let logged = serve
        .stderr
        .wait_for(" exit=", WAIT)
        .expect("the failed job is logged");
    assert!(logged.contains("exit=3"), "{logged}");
    assert!(!logged.contains("Some("), "{logged}");
}

/// The shipped rules say `signed_by`: serve takes the publishers' keys and grants, as the
/// relay and the trigger do, and still trusts its own key beside them.
#[test]
fn serve_trusts_given_keys_and_grants_beside_its_own() {
    let dir = common::temp_dir();
    let trusted = dir.path().join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    common::keypair(&trusted, "archive-master");
    let rule = "rules:\n  - name: archive\n    match: {topic: _lk.archive.*.published, signed_by: [archive-master]}\n    run: {command: [/bin/echo, archive rule ran], stdin: none}\n";
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let hello = std::fs::read_to_string(repo.join("rules.d/10-hello.yaml")).unwrap();
    let trusted_arg = trusted.display().to_string();
    let (dir, serve, line) = serve_with(
        dir,
        &[("10-hello.yaml", &hello), ("20-archive.yaml", rule)],
        &[
            "--trusted",
            &trusted_arg,
            "--grant",
            "archive-master=_lk.archive.**",
        ],
    );
    let submit = line
        .split_whitespace()
        .skip_while(|w| *w != "--relay")
        .nth(1)
        .expect("the printed line names the relay")
        .to_string();
    sh(
        &dir,
        &format!(
            "{} publish --relay {submit} --key {} _lk.archive.main.published --data '{{}}'",
            common::hark_bin().display(),
            trusted.join("archive-master.key_secret").display()
        ),
    );
    serve
        .stderr
        .wait_for("archive rule ran", WAIT)
        .expect("the signed_by rule ran");
    sh(&dir, &line);
    serve
        .stderr
        .wait_for("hello, world", WAIT)
        .expect("serve's own key is still trusted");
}
