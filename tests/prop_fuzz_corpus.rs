//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) and every crash AFL++ found
//! (fuzz/crashes/<target>/, kept after the fix) through the fuzz targets, so that `make
//! test` runs what `make fuzz` learned without AFL++: a crash once found stays a test.
//! The targets and their properties are in fuzz/src/targets.rs (docs/testing.md).

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["corpus", "crashes"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
            count += 1;
        }
    }
    assert!(
        count > 0,
        "no corpus for {target} under fuzz/corpus/{target}"
    );
    eprintln!("{target}: replayed {count} inputs");
}

#[test]
fn frames() {
    replay("frames", targets::frames);
}

#[test]
fn canonical() {
    replay("canonical", targets::canonical);
}

#[test]
fn rules() {
    replay("rules", targets::rules);
}

#[test]
fn templates() {
    replay("templates", targets::templates);
}

#[test]
fn topics() {
    replay("topics", targets::topics);
}

#[test]
fn dpkg() {
    replay("dpkg", targets::dpkg);
}

#[test]
fn amqp() {
    replay("amqp", targets::amqp);
}

#[test]
fn http() {
    replay("http", targets::http);
}
