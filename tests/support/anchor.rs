//! Finding the Python anchor (fedmsg-relay, fedmsg-trigger from fedmsg 1.1.x) that tests and
//! benches compare hark with: which virtualenvs may hold it and which one does.
//!
//! Included with `#[path]` from `tests/common/mod.rs` and `benches/support/mod.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where the benches look for the anchor: `$HARK_BENCH_PYTHON_VENV` alone if set, else the
/// test venv `<root>/.venv`, else `<root>/bench/.venv-anchor`.
pub fn bench_venvs(root: &Path) -> Vec<PathBuf> {
    match std::env::var_os("HARK_BENCH_PYTHON_VENV") {
        Some(v) => vec![PathBuf::from(v)],
        None => vec![root.join(".venv"), root.join("bench/.venv-anchor")],
    }
}

/// The first of `venvs` that has `bin/<program>`, or why there is none.
pub fn find_anchor(venvs: &[PathBuf], program: &str) -> Result<PathBuf, String> {
    venvs
        .iter()
        .find(|v| v.join("bin").join(program).is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no {program} in {} (run `make venv` or create bench/.venv-anchor: see docs/benchmarks.md)",
                venvs
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })
}
