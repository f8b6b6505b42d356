//! The live output of a running job, for `hark jobs log ID --follow`: the runner appends
//! each line it logs to `<state file>-output/<job id>.log` and removes the file when the
//! job ends (the store then keeps the tail). Another process reads it as it grows; a
//! reader that opened it keeps reading to its end after it is removed. The file holds what
//! the daemon's log holds (the same per-job cap), so it cannot fill the disk faster.

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

/// One job's live output file, removed when dropped.
#[derive(Debug)]
pub struct LiveLog {
    file: Option<File>,
    path: PathBuf,
}

impl LiveLog {
    pub fn create(path: PathBuf) -> std::io::Result<LiveLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::create(&path)?;
        Ok(LiveLog {
            file: Some(file),
            path,
        })
    }

    /// Append a line. A line to a file in the page cache, like the log line written next
    /// to it; after a failed write (disk full) the job goes on and the file stops growing.
    pub fn line(&mut self, line: &[u8]) {
        let failed = match &mut self.file {
            Some(f) => f.write_all(line).and_then(|()| f.write_all(b"\n")).is_err(),
            None => false,
        };
        if failed {
            self.file = None;
        }
    }
}

impl Drop for LiveLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_grows_line_by_line_and_goes_when_the_job_ends() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let dir = dir(&tmp.path().join("state.db"));
        assert!(dir.ends_with("state.db-output"), "{}", dir.display());
        let seven = path(&dir, 7);
        let mut log = LiveLog::create(seven.clone()).expect("created");
        log.line(b"one");
        log.line(b"two");
        assert_eq!(
            std::fs::read_to_string(&seven).ok().as_deref(),
            Some("one\ntwo\n")
        );
        drop(log);
        assert!(!seven.exists());
        std::fs::write(path(&dir, 8), "left by a crash").expect("written");
        clear(&dir);
        assert!(!path(&dir, 8).exists());
    }
}
