//! Shell completions (bash, zsh, fish) from the clap definitions, without hidden commands.

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Write `hark.bash`, `_hark` and `hark.fish` into `dir`; returns the files written.
pub fn write(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = public_command();
        written.push(clap_complete::generate_to(shell, &mut cmd, "hark", dir)?);
    }
    Ok(written)
}

/// The command without its hidden subcommands: clap_complete offers hidden subcommands
/// (zsh and bash list them), and `generate-assets` is no business of an admin's shell.
/// clap cannot remove a subcommand, so copy the root with the visible ones only.
fn public_command() -> clap::Command {
    let full = crate::cli::command();
    let mut cmd = clap::Command::new("hark")
        .subcommand_required(full.is_subcommand_required_set())
        .arg_required_else_help(full.is_arg_required_else_help_set());
    if full.get_version().is_some() {
        cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    }
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    for arg in full.get_arguments() {
        cmd = cmd.arg(arg.clone());
    }
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(sub.clone());
    }
    cmd
}
