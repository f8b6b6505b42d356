//! Rules: what hark runs for which event.
//!
//! This module owns the rules language end to end, short of running anything:
//! - [`syntax`]: the YAML as written (serde-saphyr, positions kept);
//! - [`compile`]: checking and typing one file into [`FileRules`];
//! - [`load`]: finding files in the vendor/admin directories, masking and overriding;
//! - [`set`]: the [`RuleSet`] of all loaded files, with its topic [`index`];
//! - [`rule`]: the compiled [`Rule`] the daemon consumes, and rendering it for an event;
//! - [`predicate`], [`path`], [`template`], [`dpkg`]: the pieces of a rule;
//! - [`unit`]: `run.unit`, a job as a transient systemd unit, and its allow-lists;
//! - [`check`]: `hark rules check` (lints and inline tests) and `hark rules test`.
//!
//! The daemon's path: [`load::discover`] the files, [`load::load_file`] each (keeping the
//! last good [`FileRules`] when an edit breaks one), [`RuleSet::build`], then for every
//! event [`RuleSet::matching`] and [`Rule::render`].

pub mod check;
pub mod compile;
pub mod dpkg;
pub mod events;
pub mod index;
pub mod lint;
pub mod load;
pub mod path;
pub mod predicate;
pub mod preflight;
pub mod rule;
pub mod set;
pub mod syntax;
pub mod template;
pub mod unit;

use std::fmt;
use std::path::PathBuf;

pub use compile::{FileRules, InlineTest};
pub use load::{discover, load_dirs, load_file, FileOutcome, FileStatus, LoadReport};
pub use rule::{
    Coalesce, Concurrency, OnBusy, Pool, RenderError, Rendered, Retry, Rule, RunEnd, RunSpec,
    SourcePos, StdinMode,
};
pub use set::RuleSet;

/// Vendor rules, shipped by packages.
pub const VENDOR_DIR: &str = "/usr/share/hark/rules.d";
/// Admin rules; a file here replaces the vendor file of the same name.
pub const ADMIN_DIR: &str = "/etc/hark/rules.d";

/// How bad a diagnostic is. Only errors make `hark rules check` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Note,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding about a rule file, printed as `file:line:col: severity: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: SourcePos,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.pos, self.severity, self.message)
    }
}

/// A rule file that was refused, with every error found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl RuleError {
    /// An error about the file as a whole (unreadable, not UTF-8...).
    pub fn whole_file(file: &std::path::Path, message: impl Into<String>) -> Self {
        RuleError {
            file: file.to_path_buf(),
            diagnostics: vec![Diagnostic {
                pos: SourcePos {
                    file: file.into(),
                    line: 0,
                    column: 0,
                },
                severity: Severity::Error,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleError {}
