//! The frames of big stored rows, appended once to segment files beside the journal.
//!
//! SQLite in WAL mode writes every byte of a row twice: into the WAL at commit, and from
//! there into the database file at the checkpoint. For a busy relay's rows (about a
//! thousand events, half a megabyte) that double write, with its writeback, was most of
//! the journal's CPU (docs/benchmarks.md). So a row of at least [`MIN_BYTES`] keeps only a
//! [`REF_LEN`]-byte reference in `rounds.events`, and its blob goes here: appended to the
//! current segment, which is fsynced before the SQLite commit that references it, so a row
//! never points at bytes the disk may not have. Small rows (a quiet bus, one event per
//! commit) stay inline and cost one fsync, as before.
//!
//! A segment is `<journal>.segments/<first seq>.seg`, named by the first seq of the first
//! row written into it; only appends write here, in seq order, so the rows in segment `i`
//! start before the name of segment `i + 1`, and once the first retained seq reaches that
//! name, segment `i` holds nothing retained. It is deleted at the prune after the one that
//! found it so, which leaves a reader on another connection (the HTTP API, `hark history`)
//! that read its reference just before time to finish. Bytes past the last committed
//! reference (a crash between the write and the commit, a failed commit) are cut off when
//! the writer opens the journal, or at once when the commit fails.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{JournalError, Result};

/// Stored rows with at least this many bytes of encoded events go to a segment.
pub const MIN_BYTES: usize = 64 * 1024;
/// A new segment is started by the first append after the current one reached this size
/// (smaller in unit tests, so that they see several), or an eighth of the journal's
/// `max_bytes` if that is less: pruned frames wait in the oldest segment until it goes.
const SEGMENT_BYTES: u64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };
/// The smallest segment size `max_bytes` can ask for.
const SEGMENT_BYTES_MIN: u64 = 4 * MIN_BYTES as u64;
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES, "clamp needs min <= max");
/// What `rounds.events` holds for a row in a segment: [`MAGIC`], then the segment's name,
/// the offset and the length of the row's blob (u64 little-endian each). An inline blob
/// starts with a receive time in milliseconds; the magic read as one is millions of years
/// ahead, so the two cannot be confused.
pub const REF_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"hark-seg";
/// Segment files a reader keeps open at most.
const OPEN_FILES: usize = 8;

/// Where a row's blob lives in the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
}

impl Extent {
    pub fn encode(&self) -> [u8; REF_LEN] {
        let mut out = [0u8; REF_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.segment.to_le_bytes());
        out[16..24].copy_from_slice(&self.offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The extent a stored blob refers to, if it is a reference.
    pub fn decode(blob: &[u8]) -> Option<Extent> {
        if blob.len() != REF_LEN || &blob[..8] != MAGIC {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&blob[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(Extent {
            segment: word(8),
            offset: word(16),
            len: word(24),
        })
    }
}

/// The segment being appended to.
struct Current {
    name: u64,
    file: File,
    len: u64,
    /// Written since the last fsync.
    dirty: bool,
}

/// Where an append started (the current segment's name and length), to go back to when
/// its commit fails.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    before: Option<(u64, u64)>,
}

pub struct Segments {
    dir: PathBuf,
    /// Only a writer has one (after its first big row).
    current: Option<Current>,
    /// Where the writer starts a new segment.
    segment_bytes: u64,
    /// The writer's segments, oldest first: listed once at open, then kept here, so that
    /// a prune after every append of a full journal does not read the directory.
    names: Vec<u64>,
    /// Segments found to hold nothing retained, deleted at the next prune.
    doomed: Vec<u64>,
    open: RefCell<BTreeMap<u64, File>>,
}

impl Segments {
    /// The segment directory of the journal at `path`.
    pub fn dir_of(path: &Path) -> PathBuf {
        let mut dir = path.as_os_str().to_owned();
        dir.push(".segments");
        PathBuf::from(dir)
    }

    /// For reading only.
    pub fn reader(journal: &Path) -> Segments {
        Segments {
            dir: Segments::dir_of(journal),
            current: None,
            segment_bytes: SEGMENT_BYTES,
            names: Vec::new(),
            doomed: Vec::new(),
            open: RefCell::new(BTreeMap::new()),
        }
    }

    /// For the writer of a journal that keeps `max_bytes`, given the last committed
    /// reference (`None`: no row refers to a segment): segments past it and bytes past its
    /// end were never committed and go.
    pub fn writer(journal: &Path, last: Option<Extent>, max_bytes: u64) -> Result<Segments> {
        let mut segments = Segments::reader(journal);
        segments.segment_bytes = (max_bytes / 8).clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES);
        let mut names = segments.list()?;
        for &name in names
            .iter()
            .filter(|&&n| last.is_none_or(|l| n > l.segment))
        {
            let path = segments.path(name);
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
        names.retain(|&n| last.is_some_and(|l| n <= l.segment));
        segments.names = names;
        if let Some(last) = last {
            let path = segments.path(last.segment);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            let end = last.offset + last.len;
            let len = file.metadata().map_err(|e| io(&path, e))?.len();
            if len < end {
                return Err(JournalError::Damaged {
                    seq: last.segment,
                    why: format!(
                        "{} has {len} bytes, its last row ends at {end}",
                        path.display()
                    ),
                });
            }
            if len > end {
                file.set_len(end).map_err(|e| io(&path, e))?;
            }
            segments.current = Some(Current {
                name: last.segment,
                file,
                len: end,
                dirty: false,
            });
        }
        Ok(segments)
    }

    /// Before an append: where to cut back to if its commit fails.
    pub fn mark(&self) -> Mark {
        Mark {
            before: self.current.as_ref().map(|c| (c.name, c.len)),
        }
    }

    /// Append one row's blob, the row starting at `first_seq`. The first write of an
    /// append starts a new segment when there is none or the current one is full; later
    /// writes of the same append (`mark`) stay in the segment they are in.
    pub fn write(&mut self, mark: &Mark, first_seq: u64, blob: &[u8]) -> Result<Extent> {
        let untouched = self.current.as_ref().map(|c| (c.name, c.len)) == mark.before;
        let full = self
            .current
            .as_ref()
            .is_none_or(|c| c.len >= self.segment_bytes);
        if untouched && full {
            std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
            let path = self.path(first_seq);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            // The one before was fsynced by the commit of its last append.
            self.names.push(first_seq);
            self.current = Some(Current {
                name: first_seq,
                file,
                len: 0,
                dirty: false,
            });
        }
        let Some(c) = self.current.as_mut() else {
            return Err(JournalError::Io(format!(
                "no segment open in {}",
                self.dir.display()
            )));
        };
        let offset = c.len;
        if let Err(e) = c.file.write_all_at(blob, offset) {
            let path = self.dir.join(segment_file(c.name));
            return Err(io(&path, e));
        }
        c.len += blob.len() as u64;
        c.dirty = true;
        Ok(Extent {
            segment: c.name,
            offset,
            len: blob.len() as u64,
        })
    }

    /// Make what was written durable, before the commit that refers to it.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(c) = self.current.as_mut().filter(|c| c.dirty) {
            let path = self.dir.join(segment_file(c.name));
            c.file.sync_data().map_err(|e| io(&path, e))?;
            c.dirty = false;
        }
        Ok(())
    }

    /// Forget what was written since `mark` (its commit failed): cut the segment back, or
    /// delete the one this append started and go back to the one before.
    pub fn rollback(&mut self, mark: &Mark) {
        let Some(c) = self.current.as_mut() else {
            return;
        };
        match mark.before {
            Some((name, len)) if name == c.name => {
                if c.file.set_len(len).is_ok() {
                    c.len = len;
                    c.dirty = false;
                }
                return;
            }
            _ => {}
        }
        let started = c.name;
        let _ = std::fs::remove_file(self.path(started));
        self.names.retain(|&n| n != started);
        self.current = mark.before.and_then(|(name, len)| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(name))
                .ok()?;
            Some(Current {
                name,
                file,
                len,
                dirty: false,
            })
        });
    }

    /// The blob of a stored row: `blob` itself when inline, else read from its segment.
    pub fn resolve<'b>(&self, blob: &'b [u8]) -> Result<std::borrow::Cow<'b, [u8]>> {
        let Some(extent) = Extent::decode(blob) else {
            return Ok(std::borrow::Cow::Borrowed(blob));
        };
        let path = self.path(extent.segment);
        let mut open = self.open.borrow_mut();
        if !open.contains_key(&extent.segment) {
            let file = File::open(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    JournalError::Io(format!(
                        "{} is missing: a journal's {} directory goes with its file \
                         (copied without it?), or it was pruned while this read ran (ask again)",
                        path.display(),
                        self.dir
                            .file_name()
                            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                    ))
                } else {
                    io(&path, e)
                }
            })?;
            if open.len() >= OPEN_FILES {
                open.pop_first();
            }
            open.insert(extent.segment, file);
        }
        let file = &open[&extent.segment];
        let len = usize::try_from(extent.len).map_err(|_| JournalError::Damaged {
            seq: extent.segment,
            why: format!("a row of {} bytes in {}", extent.len, path.display()),
        })?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, extent.offset)
            .map_err(|e| io(&path, e))?;
        Ok(std::borrow::Cow::Owned(buf))
    }

    /// After rows were pruned so that `first_retained` is the oldest seq left: delete the
    /// segments an earlier call found empty, and mark those that are empty now.
    pub fn prune(&mut self, first_retained: u64) -> Result<()> {
        for name in std::mem::take(&mut self.doomed) {
            let path = self.path(name);
            self.open.borrow_mut().remove(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Still in `names`, so the next prune finds it empty again and retries.
                Err(e) => return Err(io(&path, e)),
            }
            self.names.retain(|&n| n != name);
        }
        for pair in self.names.windows(2) {
            if pair[1] <= first_retained {
                self.doomed.push(pair[0]);
            }
        }
        Ok(())
    }

    /// The segments in the directory, oldest first.
    fn list(&self) -> Result<Vec<u64>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir, e)),
        };
        let mut names: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        names.sort_unstable();
        Ok(names)
    }

    fn path(&self, name: u64) -> PathBuf {
        self.dir.join(segment_file(name))
    }
}

fn segment_file(name: u64) -> String {
    format!("{name:020}.seg")
}

/// A disk full is [`JournalError::Full`], so the relay's refusal and recovery are the
/// same as when SQLite runs out of room.
fn io(path: &Path, e: std::io::Error) -> JournalError {
    if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        JournalError::Full
    } else {
        JournalError::Io(format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_and_an_inline_blob_is_not_one() {
        let e = Extent {
            segment: 7,
            offset: 1 << 40,
            len: 530_000,
        };
        assert_eq!(Extent::decode(&e.encode()), Some(e));
        // An inline blob of the same length starts with a receive time.
        let mut inline = 1_796_327_548_751i64.to_le_bytes().to_vec();
        inline.resize(REF_LEN, 0);
        assert_eq!(Extent::decode(&inline), None);
    }
}
