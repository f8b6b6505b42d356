//! `hark serve`, as README starts it: the publish command it prints works when copied
//! literally into another shell, even with no `hark` on PATH, and fires the example rule.

mod common;

use std::time::Duration;

#[test]
fn the_printed_publish_command_works_as_printed_and_fires_the_example_rule() {
    let dir = common::temp_dir();
    let rules = dir.path().join("rules.d");
    std::fs::create_dir(&rules).unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        repo.join("rules.d/10-hello.yaml"),
        rules.join("10-hello.yaml"),
    )
    .unwrap();
    let (submit, publish, replay) = (
        common::free_endpoint(),
        common::free_endpoint(),
        common::free_endpoint(),
    );
    // A PATH without hark on it, as after `cargo run --release -- serve`.
    let path = "/usr/local/bin:/usr/bin:/bin";
    let serve = common::Proc::spawn(
        "serve",
        common::hark_command()
            .current_dir(dir.path())
            .env("PATH", path)
            .args(["serve", "--submit", &submit, "--publish", &publish])
            .args(["--replay", &replay, "--state-dir"])
            .arg(dir.path().join("state")),
    );
    let wait = Duration::from_secs(30);
    let line = serve
        .stderr
        .wait_for(" publish --relay ", wait)
        .expect("serve prints how to publish");
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(line.trim())
        .env("PATH", path)
        .current_dir(dir.path())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{line}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serve
        .stderr
        .wait_for("hello, world", wait)
        .expect("the example rule ran");
}
