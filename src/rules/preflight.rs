//! What `hark rules check` checks on the host it runs on, beyond the files themselves: each
//! rule's program exists and is executable, found as the daemon would find it, and its
//! working directory exists. A typo in `command[0]` otherwise shows only when the first
//! event fires the rule and its job fails. Only literal values are checked: a program or
//! directory rendered from the event is known only then.
//!
//! The examples hark ships (`/usr/share/hark/rules.d`) run programs the package only
//! suggests (piuparts, sbuild, rsync): for them a missing program is a warning, since the
//! rule is inert until the admin grants a signer, and the fix is installing the program or
//! masking the file. Everywhere else it is an error. `--no-preflight` skips all of this,
//! for rules written on one host and deployed on another.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::rule::Rule;
use super::template::{Part, Template};
use super::{Diagnostic, Severity, VENDOR_DIR};

/// The problems of `rule` on this host, as diagnostics at the rule's position.
pub fn check_rule(rule: &Rule) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    // With `shell: true`, element 0 is the script and the program is /bin/sh.
    if !rule.run.shell {
        if let Some(program) = rule.run.command.first().and_then(literal) {
            if let Err(why) = find_program(&program, path_of(rule).as_deref()) {
                problems.push(format!("run.command[0]: {why}"));
            }
        }
    }
    if let Some(dir) = rule.run.workdir.as_ref().and_then(literal) {
        if !Path::new(&dir).is_dir() {
            problems.push(format!("run.workdir {dir} is not a directory on this host"));
        }
    }
    let example = rule.source.file.starts_with(VENDOR_DIR);
    problems
        .into_iter()
        .map(|why| Diagnostic {
            pos: rule.source.clone(),
            severity: if example {
                Severity::Warning
            } else {
                Severity::Error
            },
            message: format!(
                "rule {:?}: {why}{}",
                rule.name,
                if example {
                    " (an example shipped with hark: install what it runs, or mask the file)"
                } else {
                    ""
                }
            ),
        })
        .collect()
}

/// The template's text when it substitutes nothing.
fn literal(t: &Template) -> Option<String> {
    t.parts()
        .iter()
        .map(|p| match p {
            Part::Lit(text) => Some(text.as_str()),
            Part::Sub(_) => None,
        })
        .collect()
}

/// The `PATH` the command is looked up in: the rule's own `env: {PATH: ...}`, else the
/// daemon's, which this process stands in for.
fn path_of(rule: &Rule) -> Option<String> {
    match rule.run.env.get("PATH") {
        Some(t) => literal(t),
        None => std::env::var("PATH").ok(),
    }
}

/// Resolve `program` as the runner does: a name with a slash as it is, a bare name on
/// `path`; it must be a file with an execute bit.
fn find_program(program: &str, path: Option<&str>) -> Result<PathBuf, String> {
    if program.contains('/') {
        return executable(Path::new(program)).map(|()| PathBuf::from(program));
    }
    let dirs = path.unwrap_or_default();
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(format!("{program} is not on PATH ({dirs}) on this host"))
}

fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist on this host", path.display()),
        _ => format!("{}: {e}", path.display()),
    })?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable (no x bit)", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_the_runner_finds_them() {
        assert!(find_program("/bin/sh", None).is_ok());
        assert_eq!(
            find_program("sh", Some("/nonexistent:/bin")).ok(),
            Some(PathBuf::from("/bin/sh"))
        );
        let missing = find_program("/usr/bin/no-such-hark-program", None).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        let off_path = find_program("sh", Some("/nonexistent")).unwrap_err();
        assert!(
            off_path.contains("not on PATH (/nonexistent)"),
            "{off_path}"
        );
        let dir = find_program("/tmp", None).unwrap_err();
        assert!(dir.contains("is not a file"), "{dir}");
        let plain = tempfile::NamedTempFile::new().expect("a temp file");
        let not_x = find_program(&plain.path().display().to_string(), None).unwrap_err();
        assert!(not_x.contains("not executable"), "{not_x}");
    }
}
