//! The journal's writer thread: the only code that touches the journal file after
//! start-up.
//!
//! It takes commands in order from a channel, writes each batch, syncs according to the
//! policy, publishes the last durable batch's sequence number and wakes the loop. All
//! commands waiting in the channel are written before one `fdatasync`, so under
//! `always` a slow disk makes batches larger rather than the loop slower (group
//! commit). A failed write is retried every second, in order, with nothing dropped;
//! while it fails, [`Shared::failed`] is set so the hub refuses new messages.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::{DataDir, FsyncPolicy, write_snapshot};

/// Pause before retrying a failed write or sync.
const RETRY: Duration = Duration::from_secs(1);

/// How many times a failing write is retried at shutdown before giving up.
const STOP_RETRIES: u32 = 2;

/// How long [`Handle::stop`] waits for the writer, whatever the disk does.
pub(super) const STOP_BOUND: Duration = Duration::from_secs(4);

pub(super) enum Cmd {
    Append { seq: u64, bytes: Vec<u8> },
    Rewrite { bytes: Vec<u8> },
    Stop,
}

/// State the writer publishes to the loop.
#[derive(Default)]
pub(super) struct Shared {
    pub durable: AtomicU64,
    pub failed: AtomicBool,
    /// Set by [`Handle::stop`]: seen even while a failing write keeps the `Stop`
    /// command queued behind it.
    pub stop: AtomicBool,
}

pub(super) struct Handle {
    tx: mpsc::Sender<Cmd>,
    pub shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Closed by the writer thread when it ends.
    done: mpsc::Receiver<()>,
}

impl Handle {
    pub(super) fn spawn(
        file: File,
        dir: DataDir,
        policy: FsyncPolicy,
        waker: Arc<mio::Waker>,
    ) -> Handle {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let shared = Arc::new(Shared::default());
        let mut w = Writer {
            file,
            dir,
            policy,
            rx,
            shared: shared.clone(),
            waker,
            queue: VecDeque::new(),
            offset: 0,
            written: 0,
            unsynced: false,
            last_sync: Instant::now(),
            failing: false,
            round_failed: false,
        };
        let thread = std::thread::Builder::new()
            .name("natterd-journal".into())
            .spawn(move || {
                w.run();
                drop(done_tx);
            })
            .expect("cannot start the journal thread");
        Handle {
            tx,
            shared,
            thread: Some(thread),
            done,
        }
    }

    pub(super) fn send(&self, cmd: Cmd) {
        // The writer only exits after `Stop`; a send error means it panicked, and the
        // batch can never become durable: its held replies stay held (and logged).
        if self.tx.send(cmd).is_err() {
            error!("journal writer is gone; records are no longer stored");
            self.shared.failed.store(true, Ordering::Release);
        }
    }

    /// Writes and syncs what it can, then stops the writer; returns within
    /// [`STOP_BOUND`] whatever the disk does (a writer stuck in a system call is left
    /// behind: the process is exiting).
    pub(super) fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.send(Cmd::Stop);
        match self.done.recv_timeout(STOP_BOUND) {
            Err(RecvTimeoutError::Timeout) => {
                error!("journal: the writer did not finish within {STOP_BOUND:?}; leaving it");
            }
            _ => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

struct Writer {
    file: File,
    dir: DataDir,
    policy: FsyncPolicy,
    rx: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    waker: Arc<mio::Waker>,
    queue: VecDeque<Cmd>,
    /// Bytes of the front `Append` already written (a write can fail halfway).
    offset: usize,
    /// Sequence number of the last batch fully written.
    written: u64,
    unsynced: bool,
    last_sync: Instant,
    failing: bool,
    /// A write or sync failed in the current round.
    round_failed: bool,
}

impl Writer {
    fn run(&mut self) {
        let mut stopping = false;
        let mut stop_retries = 0;
        loop {
            let timeout = if !self.queue.is_empty() || (self.unsynced && self.failing) {
                Some(RETRY)
            } else if self.unsynced && self.policy == FsyncPolicy::EverySec {
                Some(Duration::from_secs(1).saturating_sub(self.last_sync.elapsed()))
            } else {
                None
            };
            if !stopping {
                let first = match timeout {
                    None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(t) => self.rx.recv_timeout(t),
                };
                match first {
                    Ok(cmd) => self.queue.push_back(cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => stopping = true,
                }
                while let Ok(cmd) = self.rx.try_recv() {
                    self.queue.push_back(cmd);
                }
            }
            self.round_failed = false;
            stopping |= self.write_queue();
            stopping |= self.shared.stop.load(Ordering::Acquire);
            self.sync(stopping);
            self.publish();
            if self.failing && !self.round_failed {
                self.recovered();
            }
            if stopping {
                if self.queue.is_empty() && !self.unsynced {
                    return;
                }
                stop_retries += 1;
                if stop_retries > STOP_RETRIES {
                    self.report_lost();
                    return;
                }
                std::thread::sleep(RETRY);
            }
        }
    }

    /// Says on stderr what shutdown could not make durable. None of it was ever
    /// acknowledged: the replies that would have claimed it are held until durable.
    fn report_lost(&self) {
        let (mut batches, mut bytes) = (0, 0);
        let mut kinds: std::collections::BTreeMap<&str, u64> = Default::default();
        for cmd in &self.queue {
            if let Cmd::Append { bytes: b, .. } = cmd {
                batches += 1;
                bytes += b.len();
                super::record::decode_frames(b, |r| *kinds.entry(r.kind()).or_default() += 1);
            }
        }
        let what: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        error!(
            "journal: shutting down with the disk still failing: {batches} batches ({bytes} bytes: {}) were not made durable; no reply had confirmed them to any client{}",
            if what.is_empty() {
                "nothing".to_string()
            } else {
                what.join(", ")
            },
            if self.unsynced {
                "; the last written records were not synced either"
            } else {
                ""
            }
        );
    }

    /// Writes queued commands in order until one fails; returns whether `Stop` was seen.
    fn write_queue(&mut self) -> bool {
        let mut stop = false;
        while let Some(cmd) = self.queue.front() {
            match cmd {
                Cmd::Append { seq, bytes } => {
                    let seq = *seq;
                    while self.offset < bytes.len() {
                        match self.file.write(&bytes[self.offset..]) {
                            Ok(0) => {
                                let e = io::Error::new(io::ErrorKind::WriteZero, "wrote nothing");
                                return stop | self.fail("write", e);
                            }
                            Ok(n) => self.offset += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return stop | self.fail("write", e),
                        }
                    }
                    self.offset = 0;
                    self.written = seq;
                    self.unsynced = true;
                }
                Cmd::Rewrite { bytes } => match write_snapshot(&self.dir.path, bytes) {
                    Ok(f) => {
                        // The snapshot holds everything written before it, synced.
                        self.file = f;
                        self.unsynced = false;
                        info!("journal rewritten: {} bytes of live records", bytes.len());
                    }
                    Err(e) => warn!("journal rewrite failed, keeping the old file: {e}"),
                },
                Cmd::Stop => stop = true,
            }
            self.queue.pop_front();
        }
        stop
    }

    fn sync(&mut self, stopping: bool) {
        let due = match self.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::EverySec => self.last_sync.elapsed() >= Duration::from_secs(1),
            FsyncPolicy::No => false,
        };
        if !self.unsynced || !(due || stopping) {
            return;
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
            }
            Err(e) => {
                self.fail("fdatasync", e);
            }
        }
    }

    /// Publishes what is now durable and wakes the loop if that moved.
    fn publish(&mut self) {
        let durable = if self.policy == FsyncPolicy::Always && self.unsynced {
            // Written but not yet synced: not stored under `always`.
            self.shared.durable.load(Ordering::Acquire)
        } else {
            self.written
        };
        if durable > self.shared.durable.load(Ordering::Acquire) {
            self.shared.durable.store(durable, Ordering::Release);
            if let Err(e) = self.waker.wake() {
                error!("journal: cannot wake the event loop: {e}");
            }
        }
    }

    fn fail(&mut self, what: &str, e: io::Error) -> bool {
        self.round_failed = true;
        if !self.failing {
            error!(
                "journal {what} failed: {e}; new messages are refused until it succeeds (retrying every {RETRY:?})"
            );
            self.failing = true;
            self.shared.failed.store(true, Ordering::Release);
            let _ = self.waker.wake();
        }
        false
    }

    fn recovered(&mut self) {
        info!("journal writes succeed again");
        self.failing = false;
        self.shared.failed.store(false, Ordering::Release);
        let _ = self.waker.wake();
    }
}
