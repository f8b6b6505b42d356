//! The live output of a running job, for `hark jobs log ID --follow`: the runner appends
//! each line it logs to `<state file>-output/<job id>.log` (made with the first line, so a
//! job that prints nothing has none) and removes the file when the job ends (the store
//! then keeps the tail). Another process reads it as it grows; a reader that opened it
//! keeps reading to its end after it is removed. The file holds what the daemon's log
//! holds (the same per-job cap), so it cannot fill the disk faster.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where the jobs of the daemon whose state file is `state` write their live output.
pub fn dir(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push("-output");
    state.with_file_name(name)
}

/// The live output file of job `id`.
pub fn path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.log"))
}

/// Remove what a daemon that died left behind (its jobs are recovered from the store).
pub fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// One job's live output file: created with the job's first line (most jobs print
/// nothing, and a file made and removed per job cost the daemon measurable CPU per job),
/// removed when dropped.
#[derive(Debug)]
pub struct LiveLog {
    file: Option<File>,
    path: PathBuf,
    /// Creating or writing the file failed: the job goes on without it.
    broken: bool,
}

impl LiveLog {
    pub fn new(path: PathBuf) -> LiveLog {
        LiveLog {
            file: None,
            path,
            broken: false,
        }
    }

    /// Append a line. A line to a file in the page cache, like the log line written next
    /// to it; after a failed write (disk full) the job goes on and the file stops growing.
    /// The error is returned once, when the file could not be created.
    pub fn line(&mut self, line: &[u8]) -> Option<std::io::Error> {
        if self.broken {
            return None;
        }
        if self.file.is_none() {
            match self.create() {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.broken = true;
                    return Some(e);
                }
            }
        }
        let failed = match &mut self.file {
            Some(f) => f.write_all(line).and_then(|()| f.write_all(b"\n")).is_err(),
            None => false,
        };
        self.broken = failed;
        None
    }

    fn create(&self) -> std::io::Result<File> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        File::create(&self.path)
    }
}

impl Drop for LiveLog {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_comes_with_the_first_line_grows_line_by_line_and_goes_when_the_job_ends() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let dir = dir(&tmp.path().join("state.db"));
        assert!(dir.ends_with("state.db-output"), "{}", dir.display());
        let seven = path(&dir, 7);
        let mut log = LiveLog::new(seven.clone());
        assert!(!seven.exists(), "no file before the first line");
        assert!(log.line(b"one").is_none());
        log.line(b"two");
        assert_eq!(
            std::fs::read_to_string(&seven).ok().as_deref(),
            Some("one\ntwo\n")
        );
        drop(log);
        assert!(!seven.exists());
        drop(LiveLog::new(path(&dir, 9)));
        std::fs::write(path(&dir, 8), "left by a crash").expect("written");
        clear(&dir);
        assert!(!path(&dir, 8).exists());
    }

    #[test]
    fn a_file_that_cannot_be_made_is_reported_once_and_the_job_goes_on() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let not_a_dir = tmp.path().join("plain");
        std::fs::write(&not_a_dir, "").expect("written");
        let mut log = LiveLog::new(not_a_dir.join("1.log"));
        assert!(log.line(b"one").is_some(), "the first line reports it");
        assert!(log.line(b"two").is_none(), "once");
    }
}
