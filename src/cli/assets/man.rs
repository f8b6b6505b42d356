//! Man pages from the clap definitions: `hark(1)` with FILES, CONFIGURATION (from the
//! settings table of [`crate::config::settings`]), ENVIRONMENT and EXIT STATUS, and one page
//! per visible subcommand with its SEE ALSO, and `hark.yaml(5)`: the same settings table
//! as a page of its own, where `man hark.yaml` finds it; and `hark-rules(5)`
//! ([`super::rules_page`]).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::settings::{self, SECTIONS};
use crate::config::Config;

/// The packaged paths, for the FILES section of hark(1).
const FILES: &[(&str, &str)] = &[
    (
        "/etc/hark/hark.yaml",
        "Configuration of every command; each setting is shown with its default.",
    ),
    (
        "/usr/share/hark/rules.d/",
        "Vendor rules, shipped by packages.",
    ),
    (
        "/etc/hark/rules.d/",
        "Admin rules. A file here replaces the vendor file of the same name; a symlink to /dev/null masks it.",
    ),
    (
        "/etc/hark/keys/trusted/",
        "Public keyfiles of the trusted signers (each also needs a grant in trust.grants).",
    ),
    (
        "/etc/hark/keys/secret/",
        "Secret keys: relay.key_secret is the relay's key, generated at installation.",
    ),
    (
        "/var/lib/hark/state.db",
        "The trigger daemon's job store (SQLite).",
    ),
];

/// Escape text for a roff line: backslashes, and a leading `.` or `'` (a control line).
pub(super) fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// `hark relay` becomes the page name `hark-relay`.
fn page_name(path: &[&str]) -> String {
    path.join("-")
}

/// Write every page into `dir`; returns the files written.
pub fn write(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_else(chrono::Utc::now)
        .format("%Y-%m-%d")
        .to_string();
    let mut root = crate::cli::command().disable_help_subcommand(true);
    root.build();
    let mut pages = Vec::new();
    collect_pages(&root, &mut vec![root.get_name().to_string()], &mut pages);
    let all_names: Vec<String> = pages.iter().map(|(p, _)| page_name(&as_strs(p))).collect();

    let mut written = Vec::new();
    for (path, cmd) in pages {
        let name = page_name(&as_strs(&path));
        let version = cmd
            .get_version()
            .or(root.get_version())
            .unwrap_or_default()
            .to_string();
        let man = clap_mangen::Man::new(cmd.clone())
            .title(name.clone())
            .section("1")
            .date(date.clone())
            .source(format!("hark {version}"))
            .manual("hark manual");
        let mut page = Vec::new();
        man.render(&mut page)?;
        let mut page = String::from_utf8(page).map_err(io::Error::other)?;
        if path.len() == 1 {
            page.push_str(&root_sections(&all_names));
        } else {
            page.push_str(&see_also(&path, &cmd, &all_names));
        }
        let file = dir.join(format!("{name}.1"));
        fs::write(&file, page)?;
        written.push(file);
    }
    let version = root.get_version().unwrap_or_default();
    let file = dir.join("hark.yaml.5");
    fs::write(&file, config_page(&date, version))?;
    written.push(file);
    let file = dir.join("hark-rules.5");
    fs::write(&file, super::rules_page::page(&date, version))?;
    written.push(file);
    Ok(written)
}

/// `hark.yaml(5)`: every setting, by section, with its type, default and documentation.
fn config_page(date: &str, version: &str) -> String {
    let mut s = format!(
        ".TH HARK.YAML 5 \"{date}\" \"hark {version}\" \"hark manual\"\n\
.SH NAME\nhark.yaml \\- configuration of the hark relay, trigger daemon and tools\n\
.SH SYNOPSIS\n\\fI/etc/hark/hark.yaml\\fR\n\
.SH DESCRIPTION\nEvery hark command reads this file (or the one \\fB\\-\\-config\\fR names). \
Each setting has a built\\-in default, shown below; a flag overrides the file. An error names \
the file, line and column. \\fBhark generate\\-assets\\fR writes the packaged copy, with every \
setting commented out at its default.\n"
    );
    s.push_str(&configuration_section());
    s.push_str(
        ".SH SEE ALSO\n\\fBhark\\fR(1), \\fBhark\\-relay\\fR(1), \\fBhark\\-trigger\\fR(1), \\fBhark\\-rules\\fR(5).\n",
    );
    s
}

fn as_strs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

/// Every visible command, depth first, with its path of names (`["hark", "rules", "check"]`).
fn collect_pages(
    cmd: &clap::Command,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, clap::Command)>,
) {
    // clap_mangen names a page after the display name clap sets while building
    // (`hark-rules-check`); title() overrides it, but keep the two consistent anyway.
    out.push((path.clone(), cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        path.push(sub.get_name().to_string());
        collect_pages(sub, path, out);
        path.pop();
    }
}

/// Every setting of hark.yaml, by section, with its type, default and documentation.
fn configuration_section() -> String {
    let defaults = Config::default();
    let mut s = String::from(
        ".SH CONFIGURATION\n\\fI/etc/hark/hark.yaml\\fR holds one mapping per section; every \
setting is optional and a flag on the command line overrides it. Durations are written \
500ms, 30s, 10m, 2h, 1h30m, 1d.\n",
    );
    for section in SECTIONS {
        let _ = write!(s, ".SS {}\n{}\n", section.name, roff_prose(section.doc));
        for setting in settings::of_section(section.name) {
            let default = setting.yaml_value(&defaults);
            let default = if default.is_empty() {
                "unset".to_string()
            } else {
                default
            };
            let _ = write!(
                s,
                ".TP\n\\fB{}\\fR (\\fI{}\\fR; default: {})\n{}\n",
                roff_text(&setting.path()),
                roff_text(setting.kind.describe()),
                roff_text(&default),
                roff_prose(setting.doc),
            );
        }
    }
    s
}

/// Documentation lines as roff: prose is filled; indented lines (examples) are kept as
/// written, in no-fill mode.
fn roff_prose(doc: &str) -> String {
    let mut out = Vec::new();
    let mut literal = false;
    for line in doc.lines() {
        let indented = line.starts_with(' ');
        if indented != literal {
            out.push(if indented { ".nf" } else { ".fi" }.to_string());
            literal = indented;
        }
        out.push(roff_text(line));
    }
    if literal {
        out.push(".fi".to_string());
    }
    out.join("\n")
}

fn root_sections(all_names: &[String]) -> String {
    let mut s = configuration_section();
    s.push_str(".SH FILES\n");
    for (path, what) in FILES {
        let _ = write!(s, ".TP\n\\fI{}\\fR\n{}\n", roff_text(path), roff_text(what));
    }
    s.push_str(
        ".SH ENVIRONMENT\n.TP\n\\fBHARK_LOG\\fR\nLog filter, as \\fB\\-\\-log\\fR.\n\
.TP\n\\fBHARK_CONFIG\\fR\nConfiguration file, as \\fB\\-\\-config\\fR \
(\\fI/dev/null\\fR: the built-in defaults, even where /etc/hark/hark.yaml exists).\n",
    );
    s.push_str(
        ".SH EXIT STATUS\n0 on success; 1 on failure; 2 on bad usage or configuration; \
75 when a relay did not answer in time (\\fBhark publish\\fR).\n",
    );
    s.push_str(".SH SEE ALSO\n");
    let refs: Vec<String> = all_names
        .iter()
        .skip(1)
        .map(|n| format!("\\fB{}\\fR(1)", roff_text(n)))
        .collect();
    let _ = writeln!(s, "{},", refs.join(",\n"));
    s.push_str("\\fBhark.yaml\\fR(5), \\fBhark\\-rules\\fR(5) (the rule language), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1).\n");
    s.push_str(".PP\n/usr/share/doc/hark/packaging.md (installation, keys, grants, services).\n");
    s
}

fn see_also(path: &[String], cmd: &clap::Command, all_names: &[String]) -> String {
    // hark(1), the parent command's page, and the pages of this command's own subcommands.
    let mut refs = vec!["hark".to_string()];
    if path.len() > 2 {
        refs.push(page_name(&as_strs(&path[..path.len() - 1])));
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut p = path.to_vec();
        p.push(sub.get_name().to_string());
        let name = page_name(&as_strs(&p));
        if all_names.contains(&name) {
            refs.push(name);
        }
    }
    let refs: Vec<String> = refs
        .iter()
        .map(|n| format!("\\fB{}\\fR(1)", roff_text(n)))
        .collect();
    format!(".SH SEE ALSO\n{}\n", refs.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hark_1_lists_every_setting_with_its_default() {
        let text = configuration_section();
        assert!(text.starts_with(".SH CONFIGURATION\n"), "{text}");
        for section in SECTIONS {
            assert!(
                text.contains(&format!(".SS {}\n", section.name)),
                "{}",
                section.name
            );
        }
        for setting in settings::SETTINGS {
            assert!(
                text.contains(&format!("\\fB{}\\fR (", roff_text(&setting.path()))),
                "{} missing from hark(1)",
                setting.path()
            );
        }
        assert!(
            text.contains("\\fBtrust.max_age\\fR (\\fIduration\\fR; default: 1h)"),
            "{text}"
        );
        assert!(
            text.contains("\\fBrelay.name\\fR (\\fItext\\fR; default: unset)"),
            "{text}"
        );
        // The grants example keeps its layout.
        assert!(
            text.contains(".nf\n  grants:\n    archive\\-master: [\"_lk.archive.**\"]\n"),
            "{text}"
        );
    }

    #[test]
    fn roff_prose_keeps_indented_lines_unfilled() {
        assert_eq!(roff_prose("a\nb"), "a\nb");
        assert_eq!(roff_prose("a\n  x: 1\nb"), "a\n.nf\n  x: 1\n.fi\nb");
        assert_eq!(roff_prose("a\n  x"), "a\n.nf\n  x\n.fi");
    }
}
