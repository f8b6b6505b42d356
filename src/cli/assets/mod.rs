//! `hark generate-assets DIR` (hidden): the files a package ships that are derived from the
//! code, so they never drift from it:
//!
//! - `DIR/man/*.1` ([`man`]): `hark(1)` and one page per subcommand (`hark-relay.1`,
//!   `hark-rules-check.1`, ...), from the clap definitions and the settings table, and
//!   `DIR/man/hark.yaml.5` from the settings table;
//! - `DIR/completions/{hark.bash,_hark,hark.fish}` ([`completions`]): bash, zsh and fish;
//! - `DIR/hark.yaml` ([`config_file`]): the packaged `/etc/hark/hark.yaml`, every setting
//!   of [`crate::config::settings`] with its built-in default, commented out.
//!
//! `make deb` runs this on the freshly built binary before cargo-deb packs the files.
//! Set `SOURCE_DATE_EPOCH` for a reproducible date in the man pages.

pub mod completions;
pub mod config_file;
pub mod man;
pub mod rules_page;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use config_file::packaged_config;

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Output directory (created if missing); writes man/, completions/ and hark.yaml.
    pub out: PathBuf,
}

pub fn run(args: AssetsArgs) -> ExitCode {
    match generate(&args.out) {
        Ok(files) => {
            use std::io::Write as _;
            let mut stdout = io::stdout().lock();
            for f in files {
                // A closed pipe (`| head`) ends the listing quietly; the files are written.
                if writeln!(stdout, "{}", f.display()).is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(format!("generate-assets {}: {e}", args.out.display()), 1),
    }
}

/// Write every asset under `out`; returns the files written.
pub fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    for dir in [&man_dir, &comp_dir] {
        // Start clean so a subcommand that was removed leaves no stale page behind.
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
    }
    written.extend(man::write(&man_dir)?);
    written.extend(completions::write(&comp_dir)?);
    let conf = out.join("hark.yaml");
    fs::write(&conf, packaged_config())?;
    written.push(conf);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_and_completions_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "hark.1",
            "hark-relay.1",
            "hark-trigger.1",
            "hark-rules-check.1",
            "hark.bash",
            "_hark",
            "hark.fish",
            "hark.yaml",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.contains("generate-assets")),
            "{names:?}"
        );
        for comp in ["hark.bash", "_hark", "hark.fish"] {
            let text = fs::read_to_string(dir.path().join("completions").join(comp)).unwrap();
            assert!(text.contains("relay"), "{comp}");
            assert!(
                !text.contains("generate-assets"),
                "{comp} offers the hidden command"
            );
        }
        let relay = fs::read_to_string(dir.path().join("man/hark-relay.1")).unwrap();
        assert!(
            relay.contains(".TH hark\\-relay 1") || relay.contains(".TH hark-relay 1"),
            "{relay}"
        );
        assert!(relay.contains(".SH SEE ALSO"), "{relay}");
        let config = fs::read_to_string(dir.path().join("man/hark.yaml.5")).unwrap();
        assert!(config.starts_with(".TH HARK.YAML 5 "), "{config}");
        assert!(
            config.contains("journal_max_age"),
            "every setting: {config}"
        );
    }
}
