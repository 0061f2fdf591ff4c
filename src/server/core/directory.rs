//! Who exists, who is online, and where: the one place that answers "where does this
//! user live" (a session key today; another node later), so no handler scans sessions.
//!
//! Accounts come from the credentials; an account known only from the journal (its
//! user was removed from the credentials) is a *ghost*: it cannot log in and is
//! invisible, but what was stored for it or sent by it is kept. Account ids are indexes
//! into the table and never reused; every other concern keys its per-account state by
//! them.

use std::collections::HashMap;
use std::sync::Arc;

use super::AccountId;
use crate::server::accounts::Credential;

pub(crate) struct Account {
    pub name: Box<str>,
    /// Plain text or a hash (see `accounts`); shared with verifier jobs.
    pub password: Arc<str>,
    /// The logged-in session, if any.
    pub session: Option<usize>,
    /// Position in `Directory::online` while logged in.
    online_pos: usize,
    /// Last time seen online (a logout; or a login when the server stopped), in Unix ms.
    pub last_seen: Option<u64>,
    /// While logged in: the fingerprint of the certificate its client presents to
    /// peers (told at login), handed to whoever it is introduced to. Kept here, not
    /// beside the peer port in the session's `Active`, because the session is held to
    /// its per-connection budget (see `an_idle_session_stays_small`).
    pub peer_key: Option<Box<str>>,
    /// Cluster mode: logged in on another node (boxed: most accounts never are).
    pub remote: Option<Box<Remote>>,
    pub ghost: bool,
}

/// Where a user logged in on another node is (cluster mode).
#[derive(Debug)]
pub(crate) struct Remote {
    /// The node process's incarnation.
    pub inc: u64,
    /// The stream sequence of the login.
    pub login: u64,
    /// Position in `Directory::remote`.
    pub pos: usize,
}

impl Account {
    fn new(name: Box<str>, password: Arc<str>) -> Account {
        Account {
            name,
            password,
            session: None,
            online_pos: 0,
            last_seen: None,
            peer_key: None,
            remote: None,
            ghost: false,
        }
    }
}

pub(crate) struct Directory {
    accounts: Vec<Account>,
    /// Name lookups happen on every request: foldhash (randomly seeded per process) is
    /// several times faster than SipHash, and peers cannot insert keys, only look up.
    by_name: foldhash::HashMap<Box<str>, AccountId>,
    /// Ghost accounts by name (never looked up by peers: restore and reload only).
    ghosts: HashMap<Box<str>, AccountId>,
    /// Logged-in accounts, unordered (swap-remove; `Account::online_pos` indexes it).
    online: Vec<AccountId>,
    /// Cluster mode: accounts logged in on other nodes, unordered (`Remote::pos`).
    remote: Vec<AccountId>,
}

impl Directory {
    pub(super) fn new(credentials: Vec<Credential>) -> Directory {
        let mut by_name = foldhash::HashMap::with_capacity_and_hasher(
            credentials.len(),
            foldhash::fast::RandomState::default(),
        );
        let accounts = credentials
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                by_name.insert(c.name.clone().into_boxed_str(), i as AccountId);
                Account::new(c.name.into_boxed_str(), c.password.into())
            })
            .collect();
        Directory {
            accounts,
            by_name,
            ghosts: HashMap::new(),
            online: Vec::new(),
            remote: Vec::new(),
        }
    }

    /// A user who may log in (not a ghost).
    pub(super) fn lookup(&self, name: &str) -> Option<AccountId> {
        self.by_name.get(name).copied()
    }

    pub(super) fn get(&self, id: AccountId) -> &Account {
        &self.accounts[id as usize]
    }

    pub(super) fn get_mut(&mut self, id: AccountId) -> &mut Account {
        &mut self.accounts[id as usize]
    }

    pub(super) fn name(&self, id: AccountId) -> &str {
        &self.accounts[id as usize].name
    }

    /// Where `id` is logged in, if anywhere.
    pub(super) fn locate(&self, id: AccountId) -> Option<usize> {
        self.accounts[id as usize].session
    }

    pub(super) fn accounts(&self) -> impl Iterator<Item = (AccountId, &Account)> {
        self.accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (i as AccountId, a))
    }

    /// Accounts logged in on this node.
    pub(super) fn online(&self) -> &[AccountId] {
        &self.online
    }

    /// Accounts logged in on other nodes (cluster mode).
    pub(super) fn remote_online(&self) -> &[AccountId] {
        &self.remote
    }

    /// Whether `id` is logged in here or on another node.
    pub(super) fn is_online(&self, id: AccountId) -> bool {
        let a = &self.accounts[id as usize];
        a.session.is_some() || a.remote.is_some()
    }

    /// `id` is logged in on another node.
    pub(super) fn set_remote(&mut self, id: AccountId, mut r: Remote) {
        if self.accounts[id as usize].remote.is_some() {
            self.clear_remote(id);
        }
        r.pos = self.remote.len();
        self.remote.push(id);
        self.accounts[id as usize].remote = Some(Box::new(r));
    }

    /// `id` is no longer logged in on another node; returns where it was.
    pub(super) fn clear_remote(&mut self, id: AccountId) -> Option<Box<Remote>> {
        let r = self.accounts[id as usize].remote.take()?;
        self.accounts[id as usize].peer_key = None;
        self.remote.swap_remove(r.pos);
        if let Some(&moved) = self.remote.get(r.pos)
            && let Some(m) = self.accounts[moved as usize].remote.as_deref_mut()
        {
            m.pos = r.pos;
        }
        Some(r)
    }

    pub(super) fn set_online(&mut self, id: AccountId, key: usize) {
        let a = &mut self.accounts[id as usize];
        a.session = Some(key);
        a.online_pos = self.online.len();
        self.online.push(id);
    }

    pub(super) fn set_offline(&mut self, id: AccountId, at_ms: u64) {
        let a = &mut self.accounts[id as usize];
        a.session = None;
        a.peer_key = None;
        a.last_seen = Some(at_ms);
        let pos = a.online_pos;
        self.online.swap_remove(pos);
        if let Some(&moved) = self.online.get(pos) {
            self.accounts[moved as usize].online_pos = pos;
        }
    }

    /// The account called `name`, made a ghost if the credentials do not list it.
    pub(super) fn id_or_ghost(&mut self, name: &str) -> AccountId {
        if let Some(&id) = self.by_name.get(name).or_else(|| self.ghosts.get(name)) {
            return id;
        }
        let id = self.accounts.len() as AccountId;
        let mut a = Account::new(name.into(), Arc::from(""));
        a.ghost = true;
        self.accounts.push(a);
        self.ghosts.insert(name.into(), id);
        id
    }

    /// Swaps in a new credentials list: new users can log in, changed passwords apply
    /// to the next login, removed users become ghosts. Returns (added, removed ids).
    pub(super) fn reload(&mut self, credentials: &[Credential]) -> (usize, Vec<AccountId>) {
        let fresh: HashMap<&str, &str> = credentials
            .iter()
            .map(|c| (c.name.as_str(), c.password.as_str()))
            .collect();
        let mut removed = Vec::new();
        for (i, a) in self.accounts.iter_mut().enumerate() {
            if a.ghost {
                continue;
            }
            match fresh.get(&*a.name) {
                Some(&pw) if *a.password != *pw => a.password = pw.into(),
                Some(_) => {}
                None => {
                    a.ghost = true;
                    self.by_name.remove(&*a.name);
                    self.ghosts.insert(a.name.clone(), i as AccountId);
                    removed.push(i as AccountId);
                }
            }
        }
        let mut added = 0;
        for c in credentials {
            if self.by_name.contains_key(c.name.as_str()) {
                continue;
            }
            let id = match self.ghosts.remove(c.name.as_str()) {
                Some(id) => {
                    let a = &mut self.accounts[id as usize];
                    a.ghost = false;
                    a.password = c.password.as_str().into();
                    id
                }
                None => {
                    let name: Box<str> = c.name.as_str().into();
                    self.accounts
                        .push(Account::new(name, c.password.as_str().into()));
                    (self.accounts.len() - 1) as AccountId
                }
            };
            self.by_name.insert(c.name.as_str().into(), id);
            added += 1;
        }
        (added, removed)
    }
}

/// Per-account state of one concern, indexed by account id, grown on demand (accounts
/// added by a reload or found in the journal get their defaults).
#[derive(Debug)]
pub(crate) struct PerAccount<T>(Vec<T>);

impl<T: Default> Default for PerAccount<T> {
    fn default() -> Self {
        PerAccount(Vec::new())
    }
}

impl<T: Default> PerAccount<T> {
    /// Every entry the table reaches.
    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    pub(super) fn get(&self, id: AccountId) -> Option<&T> {
        self.0.get(id as usize)
    }

    /// The entry of `id` if the table reaches it (never grows the table).
    pub(super) fn get_mut_if_any(&mut self, id: AccountId) -> Option<&mut T> {
        self.0.get_mut(id as usize)
    }

    pub(super) fn get_mut(&mut self, id: AccountId) -> &mut T {
        let i = id as usize;
        if i >= self.0.len() {
            self.0.resize_with(i + 1, T::default);
        }
        &mut self.0[i]
    }
}
