//! `hark rules check|test`: placeholder until the rules module lands.

#[derive(Debug, clap::Args)]
pub struct RulesArgs {}

pub fn run(_args: RulesArgs) -> std::process::ExitCode {
    eprintln!("hark rules: not implemented yet");
    std::process::ExitCode::from(2)
}
