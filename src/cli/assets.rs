//! `hark generate-assets DIR` (hidden): man pages and shell completions generated from the
//! clap definitions, so they never drift from `--help`. Placeholder until packaging lands.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Output directory.
    pub out: PathBuf,
}

pub fn run(_args: AssetsArgs) -> ExitCode {
    super::fail("generate-assets: not implemented yet", 1)
}
