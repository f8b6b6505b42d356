//! Finding and loading rule files: vendor directory first, then admin; a later file
//! replaces an earlier one of the same name, and a symlink to /dev/null masks it. Backup
//! and package-manager leftovers are skipped, and one bad file never stops the others.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::compile::{parse_str, FileRules};
use super::set::RuleSet;
use super::{Diagnostic, RuleError};
use crate::event::keys::is_ignored_file_name;

/// One rule file name after overriding: the path that wins, or a mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub file_name: String,
    /// The winning path (for a mask, the symlink itself).
    pub path: PathBuf,
    pub masked: bool,
    /// Same-named files in earlier directories that this one replaces.
    pub replaces: Vec<PathBuf>,
}

/// Should this directory entry be read as a rule file?
pub fn is_rule_file_name(name: &str) -> bool {
    !is_ignored_file_name(name)
        && !name.starts_with(".#")
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Why a file that looks meant as a rule file is not read, if it is one (`70-x.YAML`).
/// Editor backups and package-manager leftovers are skipped without a word.
pub fn near_miss(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    (!is_rule_file_name(name)
        && !is_ignored_file_name(name)
        && !name.starts_with(".#")
        && (lower.ends_with(".yaml") || lower.ends_with(".yml")))
    .then_some("not read: rule files must end in .yaml or .yml, in lower case")
}

/// What a look at the rule directories found besides the rule files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notices {
    /// Directories that do not exist.
    pub missing: Vec<PathBuf>,
    /// Files skipped for their name, with why.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl Notices {
    /// One line each, for a daemon's log.
    pub fn lines(&self) -> Vec<String> {
        let missing = self
            .missing
            .iter()
            .map(|d| format!("rules directory {} does not exist", d.display()));
        let skipped = self
            .skipped
            .iter()
            .map(|(f, why)| format!("{}: {why}", f.display()));
        missing.chain(skipped).collect()
    }
}

fn is_mask(path: &Path) -> bool {
    fs::read_link(path).is_ok_and(|target| target == Path::new("/dev/null"))
        || fs::canonicalize(path).is_ok_and(|p| p == Path::new("/dev/null"))
}

/// List the rule files of `dirs` (earliest first), sorted by file name. A directory that
/// does not exist contributes nothing and is noticed; one that cannot be read is reported.
pub fn discover(dirs: &[PathBuf]) -> (Vec<Discovered>, Vec<RuleError>, Notices) {
    let mut by_name: BTreeMap<String, Discovered> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut notices = Notices::default();
    for dir in dirs {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                notices.missing.push(dir.clone());
                continue;
            }
            Err(e) => {
                errors.push(RuleError::whole_file(
                    dir,
                    format!("cannot read directory: {e}"),
                ));
                continue;
            }
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_rule_file_name(&name) {
                if let Some(why) = near_miss(&name) {
                    notices.skipped.push((entry.path(), why));
                }
                continue;
            }
            let path = entry.path();
            // Directories named *.yaml are not files; a mask symlink is not a directory.
            if path.is_dir() {
                continue;
            }
            let masked = is_mask(&path);
            let replaces = by_name
                .remove(&name)
                .map(|old| {
                    let mut r = old.replaces;
                    r.push(old.path);
                    r
                })
                .unwrap_or_default();
            by_name.insert(
                name.clone(),
                Discovered {
                    file_name: name,
                    path,
                    masked,
                    replaces,
                },
            );
        }
    }
    notices.skipped.sort();
    (by_name.into_values().collect(), errors, notices)
}

/// Read and compile one rule file.
pub fn load_file(path: &Path) -> Result<FileRules, RuleError> {
    let bytes =
        fs::read(path).map_err(|e| RuleError::whole_file(path, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| RuleError::whole_file(path, format!("not UTF-8: {e}")))?;
    parse_str(path, &text)
}

/// What happened to one file.
#[derive(Debug, Clone)]
pub enum FileStatus {
    Loaded(FileRules),
    Masked,
    Refused(RuleError),
}

#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub file_name: String,
    pub path: PathBuf,
    pub replaces: Vec<PathBuf>,
    pub status: FileStatus,
}

/// Everything one load produced: the rule set and a line per file.
#[derive(Debug)]
pub struct LoadReport {
    pub set: RuleSet,
    pub files: Vec<FileOutcome>,
    /// Directories that could not be read.
    pub errors: Vec<RuleError>,
    pub notices: Notices,
}

impl LoadReport {
    /// Warnings and notes of the files that loaded.
    pub fn lints(&self) -> impl Iterator<Item = &Diagnostic> {
        self.files.iter().flat_map(|f| match &f.status {
            FileStatus::Loaded(rules) => rules.diagnostics.iter(),
            _ => [].iter(),
        })
    }

    /// Every refused file's error, and unreadable directories.
    pub fn refusals(&self) -> impl Iterator<Item = &RuleError> {
        self.errors
            .iter()
            .chain(self.files.iter().filter_map(|f| match &f.status {
                FileStatus::Refused(e) => Some(e),
                _ => None,
            }))
    }

    /// The compiled files that made it into the set.
    pub fn loaded(&self) -> impl Iterator<Item = &FileRules> {
        self.files.iter().filter_map(|f| match &f.status {
            FileStatus::Loaded(rules) => Some(rules),
            _ => None,
        })
    }
}

/// Discover, load and build: the one-shot path (`hark rules check`, tests). `paths` may
/// also name single files, which are loaded as if they were alone in a directory.
pub fn load_dirs(paths: &[PathBuf]) -> LoadReport {
    let mut dirs = Vec::new();
    let mut singles = Vec::new();
    for p in paths {
        if p.is_file() {
            singles.push(p.clone());
        } else {
            dirs.push(p.clone());
        }
    }
    let (mut found, errors, notices) = discover(&dirs);
    for single in singles {
        let file_name = single
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.retain(|d| d.file_name != file_name);
        found.push(Discovered {
            file_name,
            masked: is_mask(&single),
            path: single,
            replaces: Vec::new(),
        });
    }
    found.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let mut files: Vec<FileOutcome> = found
        .into_iter()
        .map(|d| FileOutcome {
            status: if d.masked {
                FileStatus::Masked
            } else {
                match load_file(&d.path) {
                    Ok(rules) => FileStatus::Loaded(rules),
                    Err(e) => FileStatus::Refused(e),
                }
            },
            file_name: d.file_name,
            path: d.path,
            replaces: d.replaces,
        })
        .collect();
    let compiled: Vec<FileRules> = files
        .iter()
        .filter_map(|f| match &f.status {
            FileStatus::Loaded(rules) => Some(rules.clone()),
            _ => None,
        })
        .collect();
    let (set, refused) = RuleSet::build(&compiled);
    for error in refused {
        if let Some(f) = files.iter_mut().find(|f| f.path == error.file) {
            f.status = FileStatus::Refused(error);
        }
    }
    LoadReport {
        set,
        files,
        errors,
        notices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_names_are_read() {
        for ok in ["a.yaml", "b.yml", "50-mirror.yaml"] {
            assert!(is_rule_file_name(ok), "{ok}");
        }
        for skip in [
            ".hidden.yaml",
            "a.yaml~",
            "a.yaml.dpkg-dist",
            "a.yaml.dpkg-old",
            "a.yaml.ucf-dist",
            ".#a.yaml",
            "a.json",
            "README",
            "a.yaml.bak",
        ] {
            assert!(!is_rule_file_name(skip), "{skip}");
            assert_eq!(near_miss(skip), None, "{skip} is skipped without a word");
        }
        for near in ["70-x.YAML", "a.Yml", "b.yAmL"] {
            assert!(!is_rule_file_name(near), "{near}");
            assert!(
                near_miss(near).is_some_and(|why| why.contains("lower case")),
                "{near}"
            );
        }
    }
}
