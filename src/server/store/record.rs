//! The journal's record format: pure encode/decode over byte slices, no I/O.
//!
//! A journal file is the 8-byte magic [`MAGIC`] followed by frames:
//!
//! ```text
//! len: u32 LE   length of the payload
//! crc: u32 LE   CRC-32 (IEEE) of the payload
//! payload:      tag u8, then the record's fields in order;
//!               integers u64 LE, strings u32 LE length + UTF-8 bytes
//! ```
//!
//! The length and checksum make a torn or corrupted tail detectable: decoding stops at
//! the first frame that is short, too long, fails its checksum or does not parse, and
//! everything before it is the valid prefix.

/// First bytes of every journal file (format version 1).
pub const MAGIC: &[u8; 8] = b"NATTERJ1";

/// Largest payload a frame may claim; anything longer is corruption.
pub const MAX_PAYLOAD: usize = 16 << 20;

const HEADER: usize = 8;

/// One change to the durable state. Names, not account ids: the credentials file may
/// change between runs. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// Snapshot header: the next message id to hand out.
    Meta {
        /// Greater than every message id handed out.
        next_id: u64,
    },
    /// A direct message accepted for `to` (delivered or stored; live until acknowledged).
    Msg {
        /// The message id.
        id: u64,
        /// The sender.
        from: &'a str,
        /// The recipient.
        to: &'a str,
        /// The message.
        text: &'a str,
    },
    /// `to` acknowledged every message up to and including `upto`.
    Ack {
        /// The recipient who acknowledged.
        to: &'a str,
        /// The newest id acknowledged.
        upto: u64,
    },
    /// `who` blocked `whom`.
    Block {
        /// The user who blocks.
        who: &'a str,
        /// The user blocked.
        whom: &'a str,
    },
    /// `who` unblocked `whom`.
    Unblock {
        /// The user who unblocks.
        who: &'a str,
        /// The user unblocked.
        whom: &'a str,
    },
    /// `who` logged in at `at`.
    Login {
        /// The user.
        who: &'a str,
        /// When, in Unix ms.
        at: u64,
    },
    /// `who` logged out at `at`.
    Logout {
        /// The user.
        who: &'a str,
        /// When, in Unix ms.
        at: u64,
    },
    /// The account is locked out until `until`.
    Lock {
        /// The user locked out.
        who: &'a str,
        /// Until when, in Unix ms.
        until: u64,
    },
    /// The account is locked out for logins from `ip` until `until` (scope account+ip).
    LockIp {
        /// The user locked out.
        who: &'a str,
        /// The address the lock applies to.
        ip: &'a str,
        /// Until when, in Unix ms.
        until: u64,
    },
}

const T_META: u8 = 1;
const T_MSG: u8 = 2;
const T_ACK: u8 = 3;
const T_BLOCK: u8 = 4;
const T_UNBLOCK: u8 = 5;
const T_LOGIN: u8 = 6;
const T_LOGOUT: u8 = 7;
const T_LOCK: u8 = 8;
const T_LOCK_IP: u8 = 9;

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Record<'_> {
    /// What the record is, for reports ("messages", "acks", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Meta { .. } => "meta records",
            Record::Msg { .. } => "messages",
            Record::Ack { .. } => "acks",
            Record::Block { .. } => "blocks",
            Record::Unblock { .. } => "unblocks",
            Record::Login { .. } => "logins",
            Record::Logout { .. } => "logouts",
            Record::Lock { .. } | Record::LockIp { .. } => "lockouts",
        }
    }

    /// Appends this record as one frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        match *self {
            Record::Meta { next_id } => {
                out.push(T_META);
                put_u64(out, next_id);
            }
            Record::Msg { id, from, to, text } => {
                out.push(T_MSG);
                put_u64(out, id);
                put_str(out, from);
                put_str(out, to);
                put_str(out, text);
            }
            Record::Ack { to, upto } => {
                out.push(T_ACK);
                put_str(out, to);
                put_u64(out, upto);
            }
            Record::Block { who, whom } | Record::Unblock { who, whom } => {
                out.push(if matches!(self, Record::Block { .. }) {
                    T_BLOCK
                } else {
                    T_UNBLOCK
                });
                put_str(out, who);
                put_str(out, whom);
            }
            Record::LockIp { who, ip, until } => {
                out.push(T_LOCK_IP);
                put_str(out, who);
                put_str(out, ip);
                put_u64(out, until);
            }
            Record::Login { who, at }
            | Record::Logout { who, at }
            | Record::Lock { who, until: at } => {
                out.push(match self {
                    Record::Login { .. } => T_LOGIN,
                    Record::Logout { .. } => T_LOGOUT,
                    _ => T_LOCK,
                });
                put_str(out, who);
                put_u64(out, at);
            }
        }
        let payload = &out[start + HEADER..];
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why decoding stopped before the end of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The input ends inside a frame (a write cut short).
    Truncated,
    /// A frame claims more than [`MAX_PAYLOAD`] bytes.
    BadLength(u32),
    /// The checksum does not match.
    BadChecksum,
    /// The checksum matches but the payload is not a record this version knows.
    BadRecord,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated => f.write_str("record cut short"),
            Damage::BadLength(n) => write!(f, "implausible record length {n}"),
            Damage::BadChecksum => f.write_str("checksum mismatch"),
            Damage::BadRecord => f.write_str("unknown or malformed record"),
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.buf.split_first_chunk::<8>()?;
        self.buf = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn str(&mut self) -> Option<&'a str> {
        let (head, rest) = self.buf.split_first_chunk::<4>()?;
        let n = u32::from_le_bytes(*head) as usize;
        if rest.len() < n {
            return None;
        }
        let (s, rest) = rest.split_at(n);
        self.buf = rest;
        std::str::from_utf8(s).ok()
    }
}

/// Parses one payload (without its frame header).
pub fn parse_payload(payload: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader { buf: payload };
    let rec = match r.u8()? {
        T_META => Record::Meta { next_id: r.u64()? },
        T_MSG => Record::Msg {
            id: r.u64()?,
            from: r.str()?,
            to: r.str()?,
            text: r.str()?,
        },
        T_ACK => Record::Ack {
            to: r.str()?,
            upto: r.u64()?,
        },
        T_BLOCK => Record::Block {
            who: r.str()?,
            whom: r.str()?,
        },
        T_UNBLOCK => Record::Unblock {
            who: r.str()?,
            whom: r.str()?,
        },
        T_LOGIN => Record::Login {
            who: r.str()?,
            at: r.u64()?,
        },
        T_LOGOUT => Record::Logout {
            who: r.str()?,
            at: r.u64()?,
        },
        T_LOCK => Record::Lock {
            who: r.str()?,
            until: r.u64()?,
        },
        T_LOCK_IP => Record::LockIp {
            who: r.str()?,
            ip: r.str()?,
            until: r.u64()?,
        },
        _ => return None,
    };
    // Trailing bytes mean a record this version does not understand.
    r.buf.is_empty().then_some(rec)
}

/// Decodes frames from `buf` (which starts after the magic), calling `f` for each
/// valid record. Returns how many bytes were valid and, if it stopped early, why.
pub fn decode_frames<'a>(buf: &'a [u8], mut f: impl FnMut(Record<'a>)) -> (usize, Option<Damage>) {
    let mut pos = 0;
    while pos < buf.len() {
        let Some(header) = buf[pos..].first_chunk::<HEADER>() else {
            return (pos, Some(Damage::Truncated));
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len as usize > MAX_PAYLOAD {
            return (pos, Some(Damage::BadLength(len)));
        }
        let start = pos + HEADER;
        let Some(payload) = buf.get(start..start + len as usize) else {
            return (pos, Some(Damage::Truncated));
        };
        if crc32fast::hash(payload) != crc {
            return (pos, Some(Damage::BadChecksum));
        }
        let Some(rec) = parse_payload(payload) else {
            return (pos, Some(Damage::BadRecord));
        };
        f(rec);
        pos = start + len as usize;
    }
    (pos, None)
}

/// The frame that starts at `pos`, if one does: complete, checksum right, payload a
/// record this version knows. Returns the record and where the next frame starts.
pub fn frame_at(buf: &[u8], pos: usize) -> Option<(Record<'_>, usize)> {
    let header = buf.get(pos..)?.first_chunk::<HEADER>()?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_PAYLOAD {
        return None;
    }
    let start = pos + HEADER;
    let payload = buf.get(start..start + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((parse_payload(payload)?, start + len))
}

/// The first offset after `pos` where an intact frame starts, if any: how damage in
/// the middle of a journal (valid records after it) is told from a torn tail (nothing
/// valid after it). A false match needs a 32-bit checksum and a well-formed payload to
/// line up by chance.
pub fn resync(buf: &[u8], pos: usize) -> Option<usize> {
    (pos + 1..buf.len().saturating_sub(HEADER - 1)).find(|&p| frame_at(buf, p).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_finds_the_next_intact_frame() {
        let mut buf = Vec::new();
        let mut ends = vec![0];
        for r in all() {
            r.encode(&mut buf);
            ends.push(buf.len());
        }
        // Damage inside the second frame: the third one is found again.
        let mut bad = buf.clone();
        bad[ends[1] + HEADER + 1] ^= 0x01;
        let (n, damage) = decode_frames(&bad, |_| {});
        assert_eq!((n, damage), (ends[1], Some(Damage::BadChecksum)));
        assert_eq!(resync(&bad, n), Some(ends[2]));
        // A torn tail: nothing valid after it.
        let torn = &buf[..buf.len() - 2];
        let (n, _) = decode_frames(torn, |_| {});
        assert_eq!(resync(torn, n), None);
        // Zeros after a crash (a file extended but never written) are no frame either.
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 64]);
        let (n, damage) = decode_frames(&zeros, |_| {});
        assert_eq!((n, damage), (buf.len(), Some(Damage::BadRecord)));
        assert_eq!(resync(&zeros, n), None);
    }

    fn all() -> Vec<Record<'static>> {
        vec![
            Record::Meta { next_id: 42 },
            Record::Msg {
                id: 7,
                from: "hans",
                to: "yoda",
                text: "hello  there ✓",
            },
            Record::Msg {
                id: 8,
                from: "a",
                to: "b",
                text: "",
            },
            Record::Ack {
                to: "yoda",
                upto: 7,
            },
            Record::Block {
                who: "hans",
                whom: "vader",
            },
            Record::Unblock {
                who: "hans",
                whom: "vader",
            },
            Record::Login {
                who: "luke",
                at: 1_700_000_000_000,
            },
            Record::Logout {
                who: "luke",
                at: u64::MAX,
            },
            Record::Lock {
                who: "leia",
                until: 1,
            },
            Record::LockIp {
                who: "leia",
                ip: "2001:db8::1",
                until: 7,
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        let mut buf = Vec::new();
        for r in all() {
            r.encode(&mut buf);
        }
        let mut got = Vec::new();
        let (n, damage) = decode_frames(&buf, |r| got.push(r));
        assert_eq!((n, damage), (buf.len(), None));
        assert_eq!(got, all());
    }

    #[test]
    fn every_cut_keeps_the_valid_prefix() {
        let mut buf = Vec::new();
        let mut ends = vec![0];
        for r in all() {
            r.encode(&mut buf);
            ends.push(buf.len());
        }
        for cut in 0..buf.len() {
            let mut count = 0;
            let (n, damage) = decode_frames(&buf[..cut], |_| count += 1);
            let whole = ends.iter().rposition(|&e| e <= cut).unwrap_or(0);
            assert_eq!(n, ends[whole], "cut at {cut}");
            assert_eq!(count, whole, "cut at {cut}");
            assert_eq!(damage.is_some(), cut != ends[whole], "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        for r in all() {
            r.encode(&mut buf);
        }
        let first_end = {
            let mut b = Vec::new();
            all()[0].encode(&mut b);
            b.len()
        };
        for i in first_end..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            let mut count = 0;
            let (n, damage) = decode_frames(&bad, |_| count += 1);
            assert!(damage.is_some(), "flip at {i} went unnoticed");
            assert!(n >= first_end && count >= 1, "flip at {i} lost the prefix");
        }
    }

    #[test]
    fn implausible_length_is_damage_not_allocation() {
        let mut buf = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        buf.extend_from_slice(&[1; 32]);
        assert_eq!(
            decode_frames(&buf, |_| {}),
            (0, Some(Damage::BadLength(0x7fff_ffff)))
        );
    }
}
