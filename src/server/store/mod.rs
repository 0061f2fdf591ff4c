//! The embedded store: an append-only journal of state changes, like Redis's AOF.
//!
//! - [`record`]: the frame format (length, CRC-32, payload), pure;
//! - [`recover`]: replaying a journal into the state it describes, pure;
//! - [`Journal`]: the data directory, start-up recovery, and the writer thread that
//!   owns the file.
//!
//! How it fits the single-threaded loop: the hub encodes records into an in-memory
//! batch while it handles requests; once per loop iteration the loop hands the batch
//! to the writer thread ([`Journal::submit`]), which writes it (and, under
//! [`FsyncPolicy::Always`], `fdatasync`s it) and reports the batch's sequence number
//! back through a `mio::Waker`. Replies that claim durability are held until then.
//! The loop never waits on the disk.
//!
//! The file is kept near the size of the live data by rewriting it from a snapshot of
//! the hub's state whenever it has doubled since the last rewrite (and passed a
//! minimum size), the policy of Redis's `auto-aof-rewrite-percentage 100`.

pub mod record;
pub mod recover;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;
use nix::fcntl::{Flock, FlockArg};

pub use record::Record;
pub use recover::{Message, Recovered, UserState};

/// When the writer forces written records to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before a batch counts as stored: nothing acknowledged is lost even
    /// if the machine loses power.
    Always,
    /// `fdatasync` once a second: a power loss can lose the last second; a crash of
    /// natterd alone loses nothing.
    EverySec,
    /// Leave it to the kernel: a crash of natterd loses nothing, a power loss can lose
    /// what the kernel had not written yet (typically up to 30 s).
    No,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            _ => Err(format!("`{s}` is not one of always, everysec, no")),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug)]
pub enum StoreError {
    Io(PathBuf, io::Error),
    /// Another process holds the data directory.
    Locked(PathBuf),
    NotAJournal(PathBuf),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            StoreError::Locked(p) => write!(
                f,
                "{}: data directory in use by another natterd",
                p.display()
            ),
            StoreError::NotAJournal(p) => write!(
                f,
                "{}: not a natter journal (refusing to overwrite it)",
                p.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

const JOURNAL: &str = "journal";
const JOURNAL_TMP: &str = "journal.tmp";
const LOCK: &str = "lock";

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// An opened, locked data directory and what its journal held.
pub struct DataDir {
    path: PathBuf,
    _lock: Flock<File>,
    /// Set when the journal was damaged: it is moved aside before the first rewrite.
    damaged: bool,
}

impl DataDir {
    /// Creates (if needed) and locks the directory, then replays its journal. A damaged
    /// tail is reported through the log and dropped; the damaged file is kept aside.
    pub fn open(path: &Path) -> Result<(DataDir, Recovered), StoreError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |e| StoreError::Io(p, e)
        };
        fs::create_dir_all(path).map_err(io_err(path))?;
        let lock_path = path.join(LOCK);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(path.to_path_buf()))?;
        let journal = path.join(JOURNAL);
        let mut bytes = Vec::new();
        match File::open(&journal) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_err(&journal))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io(journal, e)),
        }
        let replay =
            recover::replay(&bytes).map_err(|_| StoreError::NotAJournal(journal.clone()))?;
        let damaged = replay.damage.is_some();
        if let Some(d) = &replay.damage {
            warn!(
                "{}: {d} at byte {}; keeping the {} valid records before it and dropping the last {} bytes (the damaged file is kept as {}.damaged-*)",
                journal.display(),
                replay.valid,
                replay.state.records,
                bytes.len() - replay.valid,
                JOURNAL
            );
        }
        Ok((
            DataDir {
                path: path.to_path_buf(),
                _lock: lock,
                damaged,
            },
            replay.state,
        ))
    }
}

/// Writes `snapshot` (records, without the magic) as the new journal: to a temporary
/// file, synced, then renamed over the old one, and the directory synced.
fn write_snapshot(dir: &Path, snapshot: &[u8]) -> io::Result<File> {
    let tmp = dir.join(JOURNAL_TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(record::MAGIC)?;
    f.write_all(snapshot)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(JOURNAL))?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// The loop's handle on the journal.
pub struct Journal {
    writer: writer::Handle,
    /// Sequence number of the last batch submitted.
    submitted: u64,
    /// Bytes in the journal file once everything submitted is written.
    file_len: u64,
    /// Size of the journal right after the last rewrite.
    base_len: u64,
    /// No rewrite below this size.
    compact_min: u64,
}

impl Journal {
    /// Writes the recovered state's snapshot as a fresh journal (which also drops any
    /// damaged tail) and starts the writer thread. `waker` wakes the loop whenever
    /// more batches became durable.
    pub fn start(
        dir: DataDir,
        snapshot: &[u8],
        policy: FsyncPolicy,
        compact_min: u64,
        waker: Arc<mio::Waker>,
    ) -> Result<Journal, StoreError> {
        let journal = dir.path.join(JOURNAL);
        if dir.damaged {
            let secs = unix_ms(SystemTime::now()) / 1000;
            let aside = dir.path.join(format!("{JOURNAL}.damaged-{secs}"));
            fs::rename(&journal, &aside).map_err(|e| StoreError::Io(journal.clone(), e))?;
        }
        let file = write_snapshot(&dir.path, snapshot).map_err(|e| StoreError::Io(journal, e))?;
        let len = (record::MAGIC.len() + snapshot.len()) as u64;
        Ok(Journal {
            writer: writer::Handle::spawn(file, dir, policy, waker),
            submitted: 0,
            file_len: len,
            base_len: len,
            compact_min,
        })
    }

    /// Hands a batch of encoded records to the writer; returns its sequence number.
    pub fn submit(&mut self, batch: Vec<u8>) -> u64 {
        self.submitted += 1;
        self.file_len += batch.len() as u64;
        self.writer.send(writer::Cmd::Append {
            seq: self.submitted,
            bytes: batch,
        });
        self.submitted
    }

    /// The sequence number of the last batch that is stored under the fsync policy.
    pub fn durable(&self) -> u64 {
        self.writer.shared.durable.load(Ordering::Acquire)
    }

    /// False while the writer cannot write (disk full, I/O errors).
    pub fn healthy(&self) -> bool {
        !self.writer.shared.failed.load(Ordering::Acquire)
    }

    /// Whether the file has grown enough past the live data to be rewritten.
    pub fn wants_rewrite(&self) -> bool {
        self.file_len >= self.compact_min && self.file_len >= 2 * self.base_len
    }

    /// Replaces the journal with `snapshot` (records, no magic), after every batch
    /// submitted so far. The snapshot must describe the state including those batches.
    pub fn rewrite(&mut self, snapshot: Vec<u8>) {
        let len = (record::MAGIC.len() + snapshot.len()) as u64;
        self.file_len = len;
        self.base_len = len;
        self.writer.send(writer::Cmd::Rewrite { bytes: snapshot });
    }

    /// Bytes the journal file will hold once everything submitted is written.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Writes and syncs everything submitted, then stops the writer thread.
    pub fn close(self) {
        self.writer.stop();
    }
}
