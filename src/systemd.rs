//! Telling systemd about state changes (`Type=notify` units): READY, RELOADING, STOPPING.
//! A no-op when the process was not started by systemd.

pub use sd_notify::NotifyState;

pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
