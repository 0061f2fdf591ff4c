//! Password-hash verification off the event loop.
//!
//! argon2 and bcrypt take tens of milliseconds per check by design; done on the loop
//! thread, one login would freeze every other user for that long. The hub queues
//! [`VerifyJob`]s, the loop hands them to a small pool of threads here, and each
//! verdict comes back through a channel and a `mio::Waker`, after which the loop calls
//! `Hub::verified`. Only the session that is logging in waits.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::error;

use super::accounts;
use super::verify_queue::VerifyJob;

/// A verifier's answer: whether the password matched.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub key: usize,
    pub serial: u64,
    pub ok: bool,
}

pub(crate) struct Verifier {
    jobs: Option<Sender<VerifyJob>>,
    verdicts: Receiver<Verdict>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs handed to the threads and not answered yet: the loop hands over only as
    /// many as there are idle threads, so the waiting ones stay in the hub's fair,
    /// bounded queue (where a closed connection's job can still be dropped).
    busy: usize,
}

impl Verifier {
    /// Starts `threads` verifier threads that wake the loop through `waker`.
    pub(crate) fn start(threads: usize, waker: Arc<mio::Waker>) -> std::io::Result<Verifier> {
        let (job_tx, job_rx) = mpsc::channel::<VerifyJob>();
        let (verdict_tx, verdicts) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (jobs, out, waker) = (job_rx.clone(), verdict_tx.clone(), waker.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("natterd-verify-{i}"))
                    .spawn(move || {
                        loop {
                            // Holding the lock only while waiting: one idle thread takes
                            // the next job, the others queue behind the mutex.
                            let job = match jobs.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            let Ok(job) = job else { return };
                            let ok = accounts::verify(&job.password, &job.hash);
                            let verdict = Verdict {
                                key: job.key,
                                serial: job.serial,
                                ok,
                            };
                            if out.send(verdict).is_err() {
                                return;
                            }
                            if let Err(e) = waker.wake() {
                                error!("verifier: cannot wake the event loop: {e}");
                            }
                        }
                    })?,
            );
        }
        Ok(Verifier {
            jobs: Some(job_tx),
            verdicts,
            threads: handles,
            busy: 0,
        })
    }

    /// Threads with nothing to do.
    pub(crate) fn idle(&self) -> usize {
        self.threads.len().saturating_sub(self.busy)
    }

    pub(crate) fn submit(&mut self, job: VerifyJob) {
        if let Some(tx) = &self.jobs
            && tx.send(job).is_err()
        {
            error!("verifier threads are gone; hashed logins cannot complete");
            return;
        }
        self.busy += 1;
    }

    /// Verdicts that arrived since the last call.
    pub(crate) fn verdicts(&mut self) -> Vec<Verdict> {
        let v: Vec<Verdict> = self.verdicts.try_iter().collect();
        self.busy = self.busy.saturating_sub(v.len());
        v
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        // Closing the job channel ends every thread after its current job.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
