//! The queue of password-hash verifications waiting for a verifier thread.
//!
//! Hashing is slow on purpose (tens of milliseconds), so whoever can queue hashes can
//! make others wait. The queue is bounded ([`MAX_QUEUED`] in all, [`MAX_PER_IP`] from
//! one address: past either, a login is refused at once with `-RATE_LIMITED`, which
//! does not count as a failure) and served fairly: one job per account in turn, so a
//! flood of guesses against one account delays a login to another by at most one
//! hash per account with work queued, not by the length of the flood. A job whose
//! connection closed is dropped before it is hashed, and the loop re-checks the
//! account's lockout when it takes a job, so guesses against an account that got locked
//! meanwhile are answered `-LOCKED` without hashing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use super::core::AccountId;

/// Verifications waiting, at most.
pub(super) const MAX_QUEUED: usize = 256;
/// Verifications waiting from one address, at most.
pub(super) const MAX_PER_IP: usize = 4;

/// A password hash to verify off the loop; the answer goes to `Hub::verified`.
#[derive(Debug)]
pub struct VerifyJob {
    pub key: usize,
    pub serial: u64,
    pub password: String,
    pub hash: Arc<str>,
    pub(crate) account: AccountId,
    pub(crate) ip: IpAddr,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Debug, Default)]
pub(crate) struct VerifyQueue {
    /// Jobs per account, oldest first.
    by_account: HashMap<AccountId, VecDeque<VerifyJob>>,
    /// Accounts with jobs, in the order they get their next turn.
    turns: VecDeque<AccountId>,
    per_ip: HashMap<IpAddr, usize>,
    len: usize,
}

impl VerifyQueue {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, job: VerifyJob) -> Result<(), Full> {
        let from_ip = self.per_ip.get(&job.ip).copied().unwrap_or(0);
        if self.len >= MAX_QUEUED || from_ip >= MAX_PER_IP {
            return Err(Full);
        }
        *self.per_ip.entry(job.ip).or_default() += 1;
        self.len += 1;
        let jobs = self.by_account.entry(job.account).or_default();
        if jobs.is_empty() {
            self.turns.push_back(job.account);
        }
        jobs.push_back(job);
        Ok(())
    }

    /// The next job: the oldest of the account whose turn it is.
    pub(super) fn pop(&mut self) -> Option<VerifyJob> {
        let account = self.turns.pop_front()?;
        let jobs = self.by_account.get_mut(&account)?;
        let job = jobs.pop_front()?;
        if jobs.is_empty() {
            self.by_account.remove(&account);
        } else {
            self.turns.push_back(account);
        }
        self.forget(&job);
        Some(job)
    }

    fn forget(&mut self, job: &VerifyJob) {
        self.len -= 1;
        if let Some(n) = self.per_ip.get_mut(&job.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&job.ip);
            }
        }
    }

    /// Drops the job of a connection that closed (it is never hashed).
    pub(super) fn cancel(&mut self, key: usize, serial: u64, account: AccountId) {
        let Some(jobs) = self.by_account.get_mut(&account) else {
            return;
        };
        let Some(i) = jobs.iter().position(|j| j.key == key && j.serial == serial) else {
            return;
        };
        let job = jobs.remove(i).expect("position is in range");
        if jobs.is_empty() {
            self.by_account.remove(&account);
            self.turns.retain(|&a| a != account);
        }
        self.forget(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: usize, account: AccountId, ip: u8) -> VerifyJob {
        VerifyJob {
            key,
            serial: key as u64,
            password: String::new(),
            hash: Arc::from(""),
            account,
            ip: IpAddr::from([127, 0, 0, ip]),
        }
    }

    #[test]
    fn accounts_take_turns_and_addresses_are_capped() {
        let mut q = VerifyQueue::default();
        // An attacker on 3 addresses queues guesses for account 1...
        let mut key = 0;
        for ip in 1..=3 {
            for _ in 0..MAX_PER_IP {
                key += 1;
                q.push(job(key, 1, ip)).expect("room");
            }
            assert_eq!(q.push(job(999, 1, ip)), Err(Full));
        }
        // ...then a genuine user logs in to account 2: served second, not 13th.
        q.push(job(100, 2, 9)).expect("room");
        assert_eq!(q.pop().map(|j| j.account), Some(1));
        assert_eq!(q.pop().map(|j| j.key), Some(100));
        assert_eq!(q.len(), 3 * MAX_PER_IP - 1);
        // A closed connection's job is dropped; its address gets its room back.
        q.cancel(2, 2, 1);
        assert_eq!(q.len(), 3 * MAX_PER_IP - 2);
        q.push(job(200, 1, 1)).expect("room again");
        while q.pop().is_some() {}
        assert_eq!(q.len(), 0);
        assert!(q.per_ip.is_empty() && q.turns.is_empty() && q.by_account.is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut q = VerifyQueue::default();
        for key in 0..MAX_QUEUED {
            q.push(job(key, key as AccountId, (key % 200) as u8))
                .expect("room");
        }
        assert_eq!(q.push(job(9999, 1, 250)), Err(Full));
    }
}
