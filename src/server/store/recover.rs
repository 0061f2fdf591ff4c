//! Replaying a journal into the state it describes (pure: bytes in, state out).

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::record::{Damage, MAGIC, Record, decode_frames, frame_at, resync};

/// A message that was accepted and not yet acknowledged by its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message id.
    pub id: u64,
    /// The sender.
    pub from: String,
    /// The message.
    pub text: String,
}

/// What the journal says about one user.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserState {
    /// Undelivered or unacknowledged messages, oldest first.
    pub mailbox: VecDeque<Message>,
    /// Users this user has blocked.
    pub blocks: BTreeSet<String>,
    /// Last time the user was seen online (a logout, or a login never closed).
    pub last_seen: Option<u64>,
    /// A login with no logout after it: the server stopped while they were online.
    pub online: bool,
    /// The end of a lockout of the username, in Unix ms.
    pub locked_until: Option<u64>,
    /// Lockouts for logins from one address (scope account+ip): (address, until).
    pub ip_locks: Vec<(String, u64)>,
}

/// The state a journal describes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// What the journal says about each user.
    pub users: HashMap<String, UserState>,
    /// Greater than every message id ever handed out.
    pub next_id: u64,
    /// Time of the newest record, the best guess of when the server stopped.
    pub last_time: u64,
    /// Records applied.
    pub records: u64,
}

/// A journal that could not be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAJournal;

/// The outcome of replaying a journal file's bytes.
#[derive(Debug)]
pub struct Replay {
    /// The state the valid prefix describes.
    pub state: Recovered,
    /// Bytes of the file that held valid records (magic included).
    pub valid: usize,
    /// Why the rest, if any, was ignored.
    pub damage: Option<Damage>,
    /// Where intact records start again after the damage (file offset): set, the
    /// damage is in the middle of the journal, not a torn tail.
    pub resumes_at: Option<usize>,
}

/// One stretch of a journal that holds no intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedSpan {
    /// File offset and length of the stretch.
    pub offset: usize,
    /// Bytes in the stretch.
    pub len: usize,
    /// Why it is not a record.
    pub reason: Damage,
}

/// What `natterd journal check` finds, and what `repair` keeps.
#[derive(Debug, Default)]
pub struct Report {
    /// Intact records before the first damage (what a start would keep).
    pub records_before: u64,
    /// Intact records after the first damage (what a start would lose).
    pub records_after: u64,
    /// Of those after the damage: direct messages (and, of those, how many were
    /// still unacknowledged when the file ended).
    pub messages_after: u64,
    /// Every damaged stretch, in file order.
    pub spans: Vec<DamagedSpan>,
    /// Every intact record, damaged stretches left out, magic first: the repaired file.
    pub repaired: Vec<u8>,
}

impl Report {
    /// Whether the damage, if any, is only a torn tail (a start recovers it alone).
    pub fn only_torn_tail(&self) -> bool {
        self.records_after == 0
    }
}

/// Walks the whole file: every intact frame, every damaged stretch. Frames are
/// self-delimiting, so after damage the walk resynchronises on the next offset where
/// an intact frame (length, checksum, payload) starts; every record it keeps is one
/// whose checksum proves it intact.
pub fn check(file: &[u8]) -> Result<Report, NotAJournal> {
    if file.len() >= MAGIC.len() && &file[..MAGIC.len()] != MAGIC
        || file.len() < MAGIC.len() && !MAGIC.starts_with(file)
    {
        return Err(NotAJournal);
    }
    let mut report = Report {
        repaired: MAGIC.to_vec(),
        ..Report::default()
    };
    let body = file.get(MAGIC.len()..).unwrap_or_default();
    let mut pos = 0;
    let mut damaged = false;
    while pos < body.len() {
        match frame_at(body, pos) {
            Some((rec, next)) => {
                if damaged {
                    report.records_after += 1;
                    report.messages_after += u64::from(matches!(rec, Record::Msg { .. }));
                } else {
                    report.records_before += 1;
                }
                report.repaired.extend_from_slice(&body[pos..next]);
                pos = next;
            }
            None => {
                let (_, reason) = decode_frames(&body[pos..], |_| {});
                let end = resync(body, pos).unwrap_or(body.len());
                report.spans.push(DamagedSpan {
                    offset: MAGIC.len() + pos,
                    len: end - pos,
                    reason: reason.unwrap_or(Damage::Truncated),
                });
                damaged = true;
                pos = end;
            }
        }
    }
    Ok(report)
}

impl Recovered {
    fn user(&mut self, name: &str) -> &mut UserState {
        // Lookup first: recovery allocates a name once per user, not per record.
        if !self.users.contains_key(name) {
            self.users.insert(name.to_owned(), UserState::default());
        }
        self.users.get_mut(name).expect("inserted above")
    }

    /// Applies one record.
    pub fn apply(&mut self, rec: Record<'_>) {
        self.records += 1;
        match rec {
            Record::Meta { next_id } => self.next_id = self.next_id.max(next_id),
            Record::Msg { id, from, to, text } => {
                self.next_id = self.next_id.max(id.saturating_add(1));
                self.user(to).mailbox.push_back(Message {
                    id,
                    from: from.to_owned(),
                    text: text.to_owned(),
                });
            }
            Record::Ack { to, upto } => {
                let mailbox = &mut self.user(to).mailbox;
                // Each recipient's messages are journaled and acknowledged in id order.
                while mailbox.front().is_some_and(|m| m.id <= upto) {
                    mailbox.pop_front();
                }
            }
            Record::Block { who, whom } => {
                self.user(who).blocks.insert(whom.to_owned());
            }
            Record::Unblock { who, whom } => {
                self.user(who).blocks.remove(whom);
            }
            Record::Login { who, at } => {
                self.last_time = self.last_time.max(at);
                let u = self.user(who);
                u.online = true;
                u.last_seen = Some(at);
            }
            Record::Logout { who, at } => {
                self.last_time = self.last_time.max(at);
                let u = self.user(who);
                u.online = false;
                u.last_seen = Some(at);
            }
            Record::Lock { who, until } => {
                self.user(who).locked_until = Some(until);
            }
            Record::LockIp { who, ip, until } => {
                let locks = &mut self.user(who).ip_locks;
                locks.retain(|(i, _)| i != ip);
                locks.push((ip.to_owned(), until));
            }
        }
    }
}

/// Replays a whole journal file. An empty file is an empty journal; a file that does
/// not start with the magic is refused rather than overwritten.
pub fn replay(file: &[u8]) -> Result<Replay, NotAJournal> {
    let mut state = Recovered {
        next_id: 1,
        ..Recovered::default()
    };
    if file.is_empty() {
        return Ok(Replay {
            state,
            valid: 0,
            damage: None,
            resumes_at: None,
        });
    }
    if file.len() < MAGIC.len() {
        // A crash while creating the file.
        return if MAGIC.starts_with(file) {
            Ok(Replay {
                state,
                valid: 0,
                damage: Some(Damage::Truncated),
                resumes_at: None,
            })
        } else {
            Err(NotAJournal)
        };
    }
    if &file[..MAGIC.len()] != MAGIC {
        return Err(NotAJournal);
    }
    let body = &file[MAGIC.len()..];
    let (n, damage) = decode_frames(body, |r| state.apply(r));
    let resumes_at = damage
        .as_ref()
        .and_then(|_| resync(body, n))
        .map(|p| MAGIC.len() + p);
    Ok(Replay {
        state,
        valid: MAGIC.len() + n,
        damage,
        resumes_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(recs: &[Record<'_>]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for r in recs {
            r.encode(&mut buf);
        }
        buf
    }

    #[test]
    fn acks_remove_delivered_messages_in_order() {
        let buf = journal(&[
            Record::Msg {
                id: 1,
                from: "a",
                to: "b",
                text: "one",
            },
            Record::Msg {
                id: 2,
                from: "c",
                to: "b",
                text: "two",
            },
            Record::Msg {
                id: 3,
                from: "a",
                to: "c",
                text: "x",
            },
            Record::Ack { to: "b", upto: 1 },
        ]);
        let r = replay(&buf).unwrap();
        assert_eq!(r.damage, None);
        assert_eq!(r.valid, buf.len());
        let b = &r.state.users["b"];
        assert_eq!(b.mailbox.len(), 1);
        assert_eq!(b.mailbox[0].text, "two");
        assert_eq!(r.state.users["c"].mailbox.len(), 1);
        assert_eq!(r.state.next_id, 4);
    }

    #[test]
    fn blocks_history_and_locks() {
        let buf = journal(&[
            Record::Block {
                who: "a",
                whom: "b",
            },
            Record::Block {
                who: "a",
                whom: "c",
            },
            Record::Unblock {
                who: "a",
                whom: "b",
            },
            Record::Login { who: "a", at: 10 },
            Record::Logout { who: "a", at: 20 },
            Record::Login { who: "b", at: 30 },
            Record::Lock {
                who: "c",
                until: 99,
            },
            Record::Meta { next_id: 500 },
        ]);
        let s = replay(&buf).unwrap().state;
        assert_eq!(s.users["a"].blocks.iter().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(
            (s.users["a"].last_seen, s.users["a"].online),
            (Some(20), false)
        );
        assert_eq!(
            (s.users["b"].last_seen, s.users["b"].online),
            (Some(30), true)
        );
        assert_eq!(s.users["c"].locked_until, Some(99));
        assert_eq!((s.next_id, s.last_time), (500, 30));
    }

    #[test]
    fn damage_in_the_middle_is_told_from_a_torn_tail_and_repaired() {
        let recs: Vec<Record<'_>> = (1..=50)
            .map(|id| Record::Msg {
                id,
                from: "a",
                to: "b",
                text: "hello",
            })
            .collect();
        let buf = journal(&recs);
        let frame = (buf.len() - MAGIC.len()) / 50;
        // One flipped bit in the third record.
        let mut bad = buf.clone();
        bad[MAGIC.len() + 2 * frame + 12] ^= 0x04;
        let r = replay(&bad).unwrap();
        assert_eq!(r.damage, Some(Damage::BadChecksum));
        assert_eq!(r.resumes_at, Some(MAGIC.len() + 3 * frame));
        let report = check(&bad).unwrap();
        assert_eq!((report.records_before, report.records_after), (2, 47));
        assert_eq!(report.messages_after, 47);
        assert_eq!(report.spans.len(), 1);
        assert_eq!(report.spans[0].offset, MAGIC.len() + 2 * frame);
        assert_eq!(report.spans[0].len, frame);
        assert!(!report.only_torn_tail());
        // The repaired file replays cleanly with every intact record.
        let fixed = replay(&report.repaired).unwrap();
        assert_eq!(fixed.damage, None);
        assert_eq!(fixed.state.users["b"].mailbox.len(), 49);
        // A torn tail is only that.
        let torn = &buf[..buf.len() - 5];
        assert_eq!(replay(torn).unwrap().resumes_at, None);
        let report = check(torn).unwrap();
        assert!(report.only_torn_tail());
        assert_eq!(report.records_before, 49);
        assert!(check(b"not a journal at all").is_err());
    }

    #[test]
    fn torn_tail_keeps_prefix_and_foreign_files_are_refused() {
        let buf = journal(&[
            Record::Block {
                who: "a",
                whom: "b",
            },
            Record::Block {
                who: "a",
                whom: "c",
            },
        ]);
        let r = replay(&buf[..buf.len() - 3]).unwrap();
        assert_eq!(r.damage, Some(Damage::Truncated));
        assert_eq!(r.state.users["a"].blocks.len(), 1);
        assert!(replay(b"NATT").unwrap().damage.is_some());
        assert!(replay(b"").unwrap().damage.is_none());
        assert_eq!(
            replay(b"hello world, not a journal").err(),
            Some(NotAJournal)
        );
    }
}
