//! `hark unit-starter`: one connection of hark-unit-starter.socket, as root. The trigger
//! daemon hands it a `run.unit` job; it renders the job from root's rule files and starts
//! and watches the unit (`src/jobs/unit/starter.rs`).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::socket::{getsockopt, sockopt, SockType};

#[derive(Debug, clap::Args)]
#[command(
    long_about = "Start a run.unit job's transient unit for a trigger daemon that does not run as \
root. hark-unit-starter.socket (root's, group hark, mode 0660, Accept=yes) runs one per job, with \
the daemon's connection on stdin; it is not meant to be run by hand.\n\n\
It takes no command from the daemon: it reads the job as filed (rule name, attempt, the events), \
loads the rules from the trigger.rules directories of its own hark.yaml, and refuses a rule that is \
not there, has no run.unit, or does not match the events, and files that anyone but root may \
change. Then it starts hark-job-<id>.service as that rule says, reports the unit's end, and stops \
the unit when the daemon asks or goes away. journalctl -u 'hark-unit-starter@*' shows what it did.",
    after_help = "Example (what systemd does for every connection):\n  \
hark unit-starter --config /etc/hark/hark.yaml </the/accepted/connection"
)]
pub struct UnitStarterArgs {
    /// hark.yaml whose trigger.rules and trigger.unit_users decide what may run [default:
    /// /etc/hark/hark.yaml; built-in defaults when it does not exist].
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: UnitStarterArgs) -> ExitCode {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    if !matches!(getsockopt(&fd, sockopt::SockType), Ok(SockType::Stream)) {
        return super::fail(
            "hark unit-starter reads one connection on stdin, which is not a stream socket: \
             hark-unit-starter.socket starts it (systemctl status hark-unit-starter.socket)",
            super::EXIT_USAGE,
        );
    }
    let conn = match fd.try_clone_to_owned() {
        Ok(fd) => std::os::unix::net::UnixStream::from(fd),
        Err(e) => return super::fail(format!("stdin: {e}"), 1),
    };
    let config = args
        .config
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
    match crate::jobs::unit::starter::serve(conn, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(e, 1),
    }
}
