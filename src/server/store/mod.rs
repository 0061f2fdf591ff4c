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

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;
use nix::fcntl::{Flock, FlockArg};

pub use record::Record;
pub use recover::{DamagedSpan, Message, Recovered, Report, UserState, check};

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
    /// Reading or writing a file failed.
    Io(PathBuf, io::Error),
    /// Another process holds the data directory.
    Locked(PathBuf),
    /// The journal file does not start with the journal's magic.
    NotAJournal(PathBuf),
    /// Damage followed by intact records: starting would silently drop them.
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// Where the damage starts (file offset).
        offset: usize,
        /// What is wrong there.
        reason: record::Damage,
        /// Intact records after the damage.
        after: u64,
    },
    /// A damaged copy but no journal: an earlier start was cut off while setting the
    /// damaged journal aside (versions before 0.2 did that before writing the new one).
    DamagedCopyOnly {
        /// The data directory.
        dir: PathBuf,
        /// The damaged copy found.
        copy: PathBuf,
    },
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
            StoreError::Corrupt {
                path,
                offset,
                reason,
                after,
            } => write!(
                f,
                "{}: {reason} at byte {offset}, followed by {after} intact records; refusing to \
                 start, which would drop them. Run `natterd journal check --data-dir {}` to \
                 see what is damaged, then `natterd journal repair --data-dir {}` to keep \
                 every intact record (the original file is kept)",
                path.display(),
                dir_of(path).display(),
                dir_of(path).display()
            ),
            StoreError::DamagedCopyOnly { dir, copy } => write!(
                f,
                "{}: no journal, but a damaged copy {} is there: an earlier start was cut \
                 off. Refusing to start empty. Put the copy back (`mv {} {}`) and start \
                 again (run `natterd journal check` on it first), or remove the copy to \
                 start with no stored state",
                dir.display(),
                copy.display(),
                copy.display(),
                dir.join(JOURNAL).display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

const JOURNAL: &str = "journal";
const JOURNAL_TMP: &str = "journal.tmp";
const DAMAGED: &str = "journal.damaged-";

/// The directory a journal file is in.
fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Damaged copies set aside in `dir`, newest last.
fn damaged_copies(dir: &Path) -> Vec<PathBuf> {
    let mut copies: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(DAMAGED))
        })
        .collect();
    copies.sort();
    copies
}

/// Reads a whole journal file (empty if it does not exist).
pub fn read_journal(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| StoreError::Io(path.to_path_buf(), e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Io(path.to_path_buf(), e)),
    }
    Ok(bytes)
}

/// The journal file of a data directory.
pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join(JOURNAL)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// An opened, locked data directory and what its journal held.
pub struct DataDir {
    path: PathBuf,
    /// An exclusive `flock` on the directory itself: a lock file could be deleted
    /// under a running server, letting a second one open the same journal.
    _lock: Flock<File>,
    /// Set when the journal was damaged: it is moved aside before the first rewrite.
    damaged: bool,
}

impl DataDir {
    /// Creates (if needed) and locks the directory, then replays its journal. A torn
    /// tail (a crash mid-write) is reported through the log and dropped (the damaged
    /// file is kept aside once its replacement is safely written); damage followed by
    /// intact records refuses to start, as does a damaged copy without a journal.
    pub fn open(path: &Path) -> Result<(DataDir, Recovered), StoreError> {
        let lock = DataDir::lock(path)?;
        let journal = path.join(JOURNAL);
        let bytes = read_journal(&journal)?;
        if bytes.is_empty()
            && !journal.exists()
            && let Some(copy) = damaged_copies(path).pop()
        {
            return Err(StoreError::DamagedCopyOnly {
                dir: path.to_path_buf(),
                copy,
            });
        }
        let replay =
            recover::replay(&bytes).map_err(|_| StoreError::NotAJournal(journal.clone()))?;
        if let (Some(reason), Some(_)) = (&replay.damage, replay.resumes_at) {
            let after = recover::check(&bytes).map_or(0, |r| r.records_after);
            return Err(StoreError::Corrupt {
                path: journal,
                offset: replay.valid,
                reason: reason.clone(),
                after,
            });
        }
        let damaged = replay.damage.is_some();
        if let Some(d) = &replay.damage {
            warn!(
                "{}: torn tail ({d}) at byte {}; keeping the {} valid records before it and dropping the last {} bytes (the damaged file is kept as {}*)",
                journal.display(),
                replay.valid,
                replay.state.records,
                bytes.len() - replay.valid,
                DAMAGED
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

    /// Creates the directory if needed and takes an exclusive lock on it (the
    /// directory itself, which cannot be removed while it holds the journal).
    pub fn lock(path: &Path) -> Result<Flock<File>, StoreError> {
        let io_err = |e| StoreError::Io(path.to_path_buf(), e);
        fs::create_dir_all(path).map_err(io_err)?;
        let dir = File::open(path).map_err(io_err)?;
        Flock::lock(dir, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(path.to_path_buf()))
    }
}

/// `natterd journal repair`: writes every intact record of the journal as the new
/// journal, keeping the original as `journal.damaged-<time>`. The new file is complete
/// and synced before the rename, so a failure at any point leaves the original in place.
pub fn repair(dir: &Path) -> Result<(Report, PathBuf), StoreError> {
    let _lock = DataDir::lock(dir)?;
    let journal = dir.join(JOURNAL);
    let bytes = read_journal(&journal)?;
    let report = recover::check(&bytes).map_err(|_| StoreError::NotAJournal(journal.clone()))?;
    let aside = set_aside_name(dir);
    let io = |e| StoreError::Io(journal.clone(), e);
    write_tmp(dir, &report.repaired).map_err(io)?;
    fs::hard_link(&journal, &aside).map_err(io)?;
    commit_tmp(dir).map_err(io)?;
    Ok((report, aside))
}

/// A fresh name for a damaged journal set aside.
fn set_aside_name(dir: &Path) -> PathBuf {
    let secs = unix_ms(SystemTime::now()) / 1000;
    let mut n = 0;
    loop {
        let name = match n {
            0 => format!("{DAMAGED}{secs}"),
            n => format!("{DAMAGED}{secs}-{n}"),
        };
        let p = dir.join(name);
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// Writes a complete journal file (`bytes`, magic included) as `journal.tmp`, synced.
/// The journal itself is not touched: a failure (a full disk) leaves it as it was.
fn write_tmp(dir: &Path, bytes: &[u8]) -> io::Result<File> {
    let tmp = dir.join(JOURNAL_TMP);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(f)
    })();
    if result.is_err() {
        // Give the space back; the journal is intact.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames the synced `journal.tmp` over the journal and syncs the directory.
fn commit_tmp(dir: &Path) -> io::Result<()> {
    fs::rename(dir.join(JOURNAL_TMP), dir.join(JOURNAL))?;
    File::open(dir)?.sync_all()
}

/// Writes `snapshot` (records, without the magic) as the new journal: to a temporary
/// file, synced, then renamed over the old one, and the directory synced. The old
/// journal stays complete until the new one is.
fn write_snapshot(dir: &Path, snapshot: &[u8]) -> io::Result<File> {
    let mut bytes = Vec::with_capacity(record::MAGIC.len() + snapshot.len());
    bytes.extend_from_slice(record::MAGIC);
    bytes.extend_from_slice(snapshot);
    let f = write_tmp(dir, &bytes)?;
    commit_tmp(dir)?;
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
        // Never touch the last good copy before its replacement is complete and
        // durable: write and sync `journal.tmp`, keep the damaged file as a second name
        // (a hard link), then rename over the journal and sync the directory. A full
        // disk at any step fails the start with the journal as it was.
        let journal = dir.path.join(JOURNAL);
        let io = |e| StoreError::Io(journal.clone(), e);
        let mut bytes = Vec::with_capacity(record::MAGIC.len() + snapshot.len());
        bytes.extend_from_slice(record::MAGIC);
        bytes.extend_from_slice(snapshot);
        let file = write_tmp(&dir.path, &bytes).map_err(io)?;
        if dir.damaged {
            fs::hard_link(&journal, set_aside_name(&dir.path)).map_err(io)?;
        }
        commit_tmp(&dir.path).map_err(io)?;
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
