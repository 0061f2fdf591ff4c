//! The chat rules, driven through the core's boundary with a fake clock and no
//! sockets: every row of the contract's Login and Commands tables, lockouts, the
//! inactivity timeout, presence and blocking, the in-flight window, mailbox caps,
//! private introductions, flood control, held replies, liveness. Milliseconds, not
//! seconds: time is passed in.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::durability::JournalStore;
use super::{Core, CoreConfig};
use crate::server::accounts::Credential;

pub(super) const USERS: &[(&str, &str)] = &[
    ("hans", "falcon*solo"),
    ("yoda", "wise@!man"),
    ("vader", "sithlord**"),
    ("luke", "jedi*knight"),
    ("leia", "princess$1"),
];

/// The test accounts as credentials.
pub(super) fn credentials() -> Vec<Credential> {
    USERS
        .iter()
        .map(|(n, p)| Credential {
            name: n.to_string(),
            password: p.to_string(),
        })
        .collect()
}

/// A core and what it wrote to each connection.
struct Harness {
    core: Core,
    now: Instant,
    out: HashMap<usize, Vec<u8>>,
    closed: HashSet<usize>,
    /// Journal batches taken and not yet reported durable.
    batches: u64,
    durable: u64,
    /// Report batches durable as soon as they are taken.
    auto_durable: bool,
}

impl Harness {
    fn new(cfg: CoreConfig) -> Harness {
        Harness::with(cfg, false)
    }

    fn with(cfg: CoreConfig, journaled: bool) -> Harness {
        let creds = credentials();
        let now = Instant::now();
        let core = if journaled {
            Core::new(creds, cfg, Box::new(JournalStore::default()), now)
        } else {
            Core::in_memory(creds, cfg, now)
        };
        Harness {
            core,
            now,
            out: HashMap::new(),
            closed: HashSet::new(),
            batches: 0,
            durable: 0,
            auto_durable: true,
        }
    }

    fn connect_from(&mut self, ip: &str) -> usize {
        let addr: SocketAddr = format!("{ip}:40000").parse().expect("address");
        let key = self.core.handle_accept(addr, self.now);
        self.out.insert(key, Vec::new());
        self.closed.remove(&key);
        key
    }

    fn connect(&mut self) -> usize {
        self.connect_from("127.0.0.1")
    }

    /// What the loop does after its events: timers, batches, output, sweep.
    fn settle(&mut self) {
        self.core.handle_timeout(self.now);
        for job in self.core.poll_verify(usize::MAX, self.now) {
            let ok = crate::server::accounts::verify(&job.password, &job.hash);
            self.core.handle_verdict(job.key, job.serial, ok, self.now);
        }
        while self.core.poll_batch().is_some() {
            self.batches += 1;
        }
        if self.auto_durable {
            self.make_durable();
        }
        transmit(&mut self.core, &mut self.out, self.now);
        while self.core.poll_resumed().is_some() {}
        while let Some(k) = self.core.poll_closed() {
            self.closed.insert(k);
        }
    }

    fn make_durable(&mut self) {
        self.durable = self.batches;
        self.core.handle_durable(self.durable);
    }

    fn send(&mut self, key: usize, line: &str) {
        self.core
            .handle_read(key, format!("{line}\n").as_bytes(), self.now);
        self.settle();
    }

    /// The lines written to `key` since the last call.
    fn lines(&mut self, key: usize) -> Vec<String> {
        let bytes = std::mem::take(self.out.entry(key).or_default());
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Sends `line` and returns everything written to `key` after it.
    fn ask(&mut self, key: usize, line: &str) -> Vec<String> {
        self.lines(key);
        self.send(key, line);
        self.lines(key)
    }

    fn hello(&mut self) -> usize {
        let k = self.connect();
        let ping = self.core.config().ping_interval.as_secs();
        assert_eq!(
            self.ask(k, "HELLO 1"),
            [format!(
                "+HELLO 1 natterd/{} {ping}",
                env!("CARGO_PKG_VERSION")
            )]
        );
        k
    }

    fn login(&mut self, user: &str) -> usize {
        let pw = USERS.iter().find(|(u, _)| *u == user).expect("user").1;
        let k = self.hello();
        let got = self.ask(k, &format!("LOGIN {user} {pw}"));
        assert_eq!(got.first().map(String::as_str), Some("+WELCOME"), "{got:?}");
        k
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.settle();
    }

    fn is_closed(&self, key: usize) -> bool {
        self.closed.contains(&key)
    }
}

/// The loop's flush with no sockets: every connection's output into `out`, all taken.
pub(super) fn transmit(core: &mut Core, out: &mut HashMap<usize, Vec<u8>>, now: Instant) {
    core.poll_transmit(
        |key, bytes| {
            out.entry(key).or_default().extend_from_slice(bytes);
            Ok(bytes.len())
        },
        now,
    );
}

fn core() -> Harness {
    Harness::new(CoreConfig::default())
}

// ---- the Login table ----------------------------------------------------------------

#[test]
fn login_success_and_unknown_username_in_the_classic_order() {
    let mut h = core();
    let k = h.hello();
    assert_eq!(h.ask(k, "USER bob"), ["-NO_SUCH_USER bob"]);
    assert_eq!(h.ask(k, "PASS falcon*solo"), ["-NOT_LOGGED_IN"]);
    assert_eq!(h.ask(k, "USER hans"), ["+USER hans"]);
    assert_eq!(h.ask(k, "PASS falcon*solo"), ["+WELCOME"]);
    assert_eq!(h.ask(k, "USER hans"), ["-ALREADY_LOGGED_IN"]);
    // The one-shot form, for scripts.
    let y = h.hello();
    assert_eq!(h.ask(y, "LOGIN nobody x"), ["-NO_SUCH_USER nobody"]);
    assert_eq!(h.ask(y, "LOGIN yoda wise@!man"), ["+WELCOME"]);
    assert_eq!(h.lines(k), ["*LOGIN yoda"]);
}

#[test]
fn three_wrong_passwords_lock_for_the_block_duration_from_anywhere() {
    let mut h = core();
    let k = h.hello();
    assert_eq!(h.ask(k, "USER vader"), ["+USER vader"]);
    assert_eq!(h.ask(k, "PASS a"), ["-BAD_PASSWORD 2"]);
    assert_eq!(h.ask(k, "PASS b"), ["-BAD_PASSWORD 1"]);
    assert_eq!(h.ask(k, "PASS c"), ["-LOCKED_NOW"]);
    assert!(h.is_closed(k));
    // Locked, even with the right password, from another address, at the username.
    let k = h.connect_from("10.0.0.9");
    h.send(k, "HELLO 1");
    assert_eq!(h.ask(k, "USER vader"), ["-LOCKED"]);
    assert!(h.is_closed(k));
    let k = h.hello();
    assert_eq!(h.ask(k, "LOGIN vader sithlord**"), ["-LOCKED"]);
    // The lock ends after BLOCK_DURATION (60 s).
    h.advance(Duration::from_secs(59));
    let k = h.hello();
    assert_eq!(h.ask(k, "USER vader"), ["-LOCKED"]);
    h.advance(Duration::from_secs(2));
    let k = h.hello();
    assert_eq!(h.ask(k, "USER vader"), ["+USER vader"]);
    assert_eq!(h.ask(k, "PASS sithlord**"), ["+WELCOME"]);
}

#[test]
fn a_success_resets_the_failure_count_and_the_username_step_never_counts() {
    let mut h = core();
    let k = h.hello();
    for _ in 0..5 {
        assert_eq!(h.ask(k, "USER bob"), ["-NO_SUCH_USER bob"]);
        assert_eq!(h.ask(k, "USER yoda"), ["+USER yoda"]);
    }
    assert_eq!(h.ask(k, "PASS x"), ["-BAD_PASSWORD 2"]);
    assert_eq!(h.ask(k, "PASS x"), ["-BAD_PASSWORD 1"]);
    assert_eq!(h.ask(k, "PASS wise@!man"), ["+WELCOME"]);
    h.send(k, "LOGOUT");
    let k = h.hello();
    assert_eq!(h.ask(k, "LOGIN yoda x"), ["-BAD_PASSWORD 2"]);
}

#[test]
fn account_plus_ip_scope_locks_only_that_address() {
    let mut h = Harness::new(CoreConfig {
        lockout_scope: super::LockoutScope::AccountIp,
        ..CoreConfig::default()
    });
    let k = h.connect_from("10.0.0.1");
    h.send(k, "HELLO 1");
    for want in ["-BAD_PASSWORD 2", "-BAD_PASSWORD 1", "-LOCKED_NOW"] {
        h.lines(k);
        h.send(k, "LOGIN hans x");
        assert_eq!(h.lines(k), [want]);
    }
    let k = h.connect_from("10.0.0.2");
    h.send(k, "HELLO 1");
    h.lines(k);
    h.send(k, "LOGIN hans falcon*solo");
    assert_eq!(h.lines(k), ["+WELCOME"]);
}

#[test]
fn an_online_account_is_refused_and_the_first_session_is_untouched() {
    let mut h = core();
    let first = h.login("hans");
    let k = h.hello();
    assert_eq!(h.ask(k, "USER hans"), ["-ALREADY_ONLINE"]);
    assert!(h.is_closed(k));
    let k = h.hello();
    assert_eq!(h.ask(k, "LOGIN hans falcon*solo"), ["-ALREADY_ONLINE"]);
    assert!(h.is_closed(k));
    assert_eq!(h.ask(first, "WHOELSE"), ["+USERS"]);
}

#[test]
fn stored_messages_come_right_after_the_welcome_oldest_first() {
    let mut h = core();
    let hans = h.login("hans");
    assert_eq!(h.ask(hans, "MSG leia one"), ["+STORED leia"]);
    assert_eq!(h.ask(hans, "MSG leia two  spaced"), ["+STORED leia"]);
    let k = h.hello();
    assert_eq!(
        h.ask(k, "LOGIN leia princess$1"),
        ["+WELCOME", "*MSG 1 hans one", "*MSG 2 hans two  spaced"]
    );
}

#[test]
fn handshake_first_and_login_before_commands() {
    let mut h = core();
    let k = h.connect();
    assert_eq!(h.ask(k, "WHOELSE"), ["-HELLO_FIRST"]);
    assert_eq!(h.ask(k, "HELLO 2"), ["-VERSION 1"]);
    assert_eq!(h.ask(k, "PING x"), ["+PONG x"]);
    h.send(k, "HELLO 1");
    assert_eq!(h.ask(k, "WHOELSE"), ["-NOT_LOGGED_IN"]);
}

// ---- the Commands table -------------------------------------------------------------

#[test]
fn message_delivery_and_every_error_in_order() {
    let mut h = core();
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    h.lines(hans);
    assert_eq!(h.ask(hans, "MSG yoda hello   there"), ["+SENT yoda"]);
    assert_eq!(h.lines(yoda), ["*MSG 1 hans hello   there"]);
    assert_eq!(h.ask(hans, "MSG bob hi"), ["-NO_SUCH_USER bob"]);
    assert_eq!(h.ask(hans, "MSG hans hi"), ["-SELF"]);
    assert_eq!(h.ask(yoda, "BLOCK hans"), ["+BLOCKED hans"]);
    assert_eq!(h.ask(hans, "MSG yoda hi"), ["-BLOCKED_BY yoda"]);
    assert_eq!(h.ask(hans, "MSG yoda \u{1b}[2J"), ["-BAD_TEXT"]);
    assert_eq!(h.ask(hans, "MSG yoda"), ["-BAD_ARGUMENTS"]);
    assert_eq!(h.ask(hans, "DANCE"), ["-UNKNOWN_COMMAND"]);
    // Offline: stored for the next login.
    assert_eq!(h.ask(hans, "MSG leia later"), ["+STORED leia"]);
}

#[test]
fn broadcast_skips_the_sender_and_those_who_blocked_them() {
    let mut h = core();
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    let luke = h.login("luke");
    assert_eq!(h.ask(luke, "BLOCK hans"), ["+BLOCKED hans"]);
    h.lines(hans);
    h.lines(yoda);
    assert_eq!(h.ask(hans, "BCAST hi all"), ["+BCAST 1 1"]);
    assert_eq!(h.lines(yoda), ["*BCAST hans hi all"]);
    assert_eq!(h.lines(luke), Vec::<String>::new());
    assert_eq!(h.ask(yoda, "BCAST back"), ["+BCAST 2 0"]);
}

#[test]
fn whoelse_and_whoelsesince_leave_out_self_and_blockers() {
    let mut h = core();
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    let luke = h.login("luke");
    assert_eq!(h.ask(hans, "WHOELSE"), ["+USERS luke yoda"]);
    assert_eq!(h.ask(luke, "BLOCK hans"), ["+BLOCKED hans"]);
    assert_eq!(h.ask(hans, "WHOELSE"), ["+USERS yoda"]);
    h.send(yoda, "LOGOUT");
    h.advance(Duration::from_secs(100));
    assert_eq!(h.ask(hans, "WHOELSE"), ["+USERS"]);
    assert_eq!(h.ask(hans, "WHOELSESINCE 200"), ["+USERS yoda"]);
    assert_eq!(h.ask(hans, "WHOELSESINCE 1m"), ["+USERS"]);
    assert_eq!(h.ask(hans, "WHOELSESINCE soon"), ["-BAD_ARGUMENTS"]);
}

#[test]
fn block_and_unblock_with_their_errors() {
    let mut h = core();
    let hans = h.login("hans");
    assert_eq!(h.ask(hans, "BLOCK hans"), ["-SELF"]);
    assert_eq!(h.ask(hans, "BLOCK bob"), ["-NO_SUCH_USER bob"]);
    assert_eq!(h.ask(hans, "UNBLOCK yoda"), ["-NOT_BLOCKED yoda"]);
    assert_eq!(h.ask(hans, "BLOCK yoda"), ["+BLOCKED yoda"]);
    assert_eq!(h.ask(hans, "BLOCK yoda"), ["+BLOCKED yoda"]);
    assert_eq!(h.ask(hans, "UNBLOCK yoda"), ["+UNBLOCKED yoda"]);
    assert_eq!(h.ask(hans, "UNBLOCK hans"), ["-SELF"]);
}

#[test]
fn presence_respects_blocks_both_ways() {
    let mut h = core();
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    assert_eq!(h.lines(hans), ["*LOGIN yoda"]);
    // yoda blocks hans: hans never sees yoda come or go; yoda still sees hans.
    assert_eq!(h.ask(yoda, "BLOCK hans"), ["+BLOCKED hans"]);
    assert_eq!(h.ask(yoda, "LOGOUT"), ["+BYE"]);
    assert_eq!(h.lines(hans), Vec::<String>::new());
    let yoda = h.login("yoda");
    assert_eq!(h.lines(hans), Vec::<String>::new());
    h.send(hans, "LOGOUT");
    assert_eq!(h.lines(yoda), ["*LOGOUT hans"]);
}

#[test]
fn logout_says_bye_closes_and_tells_the_others() {
    let mut h = core();
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    h.lines(hans);
    assert_eq!(h.ask(yoda, "LOGOUT"), ["+BYE"]);
    assert!(h.is_closed(yoda));
    assert_eq!(h.lines(hans), ["*LOGOUT yoda"]);
}

#[test]
fn inactivity_counts_only_what_the_user_types() {
    let mut h = Harness::new(CoreConfig {
        timeout: Duration::from_secs(10),
        ..CoreConfig::default()
    });
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    // yoda keeps typing; hans only receives.
    for _ in 0..3 {
        h.advance(Duration::from_secs(4));
        h.send(yoda, "MSG hans tick");
    }
    let got = h.lines(hans);
    assert!(got.contains(&"*TIMEOUT".to_string()), "{got:?}");
    assert!(h.is_closed(hans));
    assert!(!h.is_closed(yoda));
    // Pings, pongs and acks are not activity; ACTIVE is.
    h.advance(Duration::from_secs(6));
    h.send(yoda, "ACTIVE");
    h.advance(Duration::from_secs(6));
    h.send(yoda, "PING x");
    h.advance(Duration::from_secs(5));
    assert!(h.is_closed(yoda));
}

// ---- delivery, caps, introductions, flood, durability, liveness ---------------------

#[test]
fn the_in_flight_window_paces_delivery_and_acks_refill_it() {
    let mut h = Harness::new(CoreConfig {
        ack_window: 2,
        ..CoreConfig::default()
    });
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    h.lines(yoda);
    for i in 0..4 {
        h.send(hans, &format!("MSG yoda m{i}"));
    }
    assert_eq!(h.lines(yoda), ["*MSG 1 hans m0", "*MSG 2 hans m1"]);
    h.send(yoda, "ACK 1");
    assert_eq!(h.lines(yoda), ["*MSG 3 hans m2"]);
    h.send(yoda, "ACK 3");
    assert_eq!(h.lines(yoda), ["*MSG 4 hans m3"]);
    // Unacknowledged messages go back to the mailbox when the session ends.
    h.core.handle_closed(yoda, super::CloseReason::Eof, h.now);
    h.settle();
    let k = h.hello();
    assert_eq!(
        h.ask(k, "LOGIN yoda wise@!man"),
        ["+WELCOME", "*MSG 4 hans m3"]
    );
}

#[test]
fn mailbox_caps_refuse_and_keep_what_is_stored() {
    let mut h = Harness::new(CoreConfig {
        mailbox_max_messages: 200,
        ..CoreConfig::default()
    });
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    // One sender fills three quarters at most; another still gets in.
    for i in 0..150 {
        assert_eq!(h.ask(hans, &format!("MSG leia s{i}")), ["+STORED leia"]);
    }
    assert_eq!(h.ask(hans, "MSG leia more"), ["-MAILBOX_FULL leia"]);
    for i in 0..50 {
        assert_eq!(h.ask(yoda, &format!("MSG leia y{i}")), ["+STORED leia"]);
    }
    assert_eq!(h.ask(yoda, "MSG leia full"), ["-MAILBOX_FULL leia"]);
}

#[test]
fn private_introductions_carry_a_fresh_token_and_are_rate_limited() {
    let mut h = core();
    let hans = h.login("hans");
    let k = h.hello();
    assert_eq!(h.ask(k, "LOGIN leia princess$1 5555"), ["+WELCOME"]);
    h.lines(hans);
    assert_eq!(h.ask(hans, "PRIVATE bob"), ["-NO_SUCH_USER bob"]);
    assert_eq!(h.ask(hans, "PRIVATE hans"), ["-SELF"]);
    assert_eq!(h.ask(hans, "PRIVATE yoda"), ["-OFFLINE yoda"]);
    let yoda = h.login("yoda");
    h.lines(k);
    assert_eq!(h.ask(hans, "PRIVATE yoda"), ["-NO_PEER yoda"]);
    let mut tokens = HashSet::new();
    for _ in 0..8 {
        let got = h.ask(hans, "PRIVATE leia");
        let token = got[0]
            .strip_prefix("+PEER leia 127.0.0.1 5555 ")
            .expect("an introduction")
            .to_string();
        assert_eq!(h.lines(k), [format!("*EXPECT hans {token}")]);
        assert_eq!(token.len(), 32);
        assert!(tokens.insert(token), "a token was reused");
    }
    assert_eq!(h.ask(hans, "PRIVATE leia"), ["-RATE_LIMITED"]);
    // Others still get theirs; and the requester's share comes back with time.
    assert!(h.ask(yoda, "PRIVATE leia")[0].starts_with("+PEER leia "));
    h.advance(Duration::from_secs(4));
    assert!(h.ask(hans, "PRIVATE leia")[0].starts_with("+PEER leia "));
    // Blocked: refused whether or not the target is online.
    assert_eq!(h.ask(k, "BLOCK hans"), ["+BLOCKED hans"]);
    assert_eq!(h.ask(hans, "PRIVATE leia"), ["-BLOCKED_BY leia"]);
}

#[test]
fn a_flood_is_paused_not_dropped_and_resumes_in_order() {
    let mut h = Harness::new(CoreConfig {
        flood_burst: 3,
        flood_rate: 1.0,
        limit_loopback: true,
        ..CoreConfig::default()
    });
    let hans = h.login("hans");
    h.lines(hans);
    let burst: String = (0..6).map(|i| format!("PING p{i}\nPONG {i}\n")).collect();
    h.core.handle_read(hans, burst.as_bytes(), h.now);
    h.settle();
    // HELLO and LOGIN took two tokens: one more ping, then the input waits (the
    // PONGs in between never count).
    assert_eq!(h.lines(hans), ["+PONG p0"]);
    assert!(!h.core.wants_read(hans));
    h.advance(Duration::from_secs(1));
    assert_eq!(h.lines(hans), ["+PONG p1"]);
    // A longer pause refills up to the burst.
    h.advance(Duration::from_secs(3));
    assert_eq!(h.lines(hans), ["+PONG p2", "+PONG p3", "+PONG p4"]);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.lines(hans), ["+PONG p5"]);
    assert!(h.core.wants_read(hans));
    assert!(h.core.stats().flood_throttled >= 2);
}

#[test]
fn a_reply_waits_for_its_journal_batch_while_pushes_flow() {
    let mut h = Harness::with(CoreConfig::default(), true);
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    h.lines(hans);
    h.auto_durable = false;
    // The block's reply waits for the disk...
    h.send(yoda, "BLOCK vader");
    assert_eq!(h.lines(yoda), Vec::<String>::new());
    // ...pushes do not (they wait a moment, to share a write with the reply, then
    // go out on their own), and replies keep their order behind it.
    h.send(hans, "BCAST hi");
    h.send(yoda, "PING after");
    assert_eq!(h.lines(yoda), Vec::<String>::new());
    assert!(h.core.poll_timeout().is_some());
    h.advance(super::outbox::PUSH_WAIT);
    assert_eq!(h.lines(yoda), ["*BCAST hans hi"]);
    h.make_durable();
    h.settle();
    assert_eq!(h.lines(yoda), ["+BLOCKED vader", "+PONG after"]);
    // A message's +SENT waits too; the recipient gets the message at once.
    h.lines(hans);
    h.send(hans, "MSG yoda stored?");
    assert_eq!(h.lines(yoda), ["*MSG 1 hans stored?"]);
    // Enough pushes go out at once, without waiting.
    let big = "x".repeat(1000);
    for _ in 0..20 {
        h.send(yoda, &format!("BCAST {big}"));
    }
    let at_once = h.lines(hans).len();
    assert!(
        (16..20).contains(&at_once),
        "{at_once} broadcasts went out at once"
    );
    h.advance(super::outbox::PUSH_WAIT);
    assert_eq!(h.lines(hans).len(), 20 - at_once);
    assert_eq!(h.lines(hans), Vec::<String>::new());
    h.make_durable();
    h.settle();
    assert_eq!(h.lines(hans), ["+SENT yoda"]);
    // A store that cannot write refuses new messages outright.
    h.core.handle_store_health(false);
    assert_eq!(h.ask(hans, "MSG yoda now?"), ["-STORE_UNAVAILABLE"]);
}

#[test]
fn a_silent_connection_is_pinged_then_dropped_and_login_has_a_deadline() {
    let mut h = Harness::new(CoreConfig {
        ping_interval: Duration::from_secs(5),
        ping_timeout: Duration::from_secs(5),
        ..CoreConfig::default()
    });
    let hans = h.login("hans");
    h.advance(Duration::from_secs(6));
    assert_eq!(h.lines(hans), ["*PING 1"]);
    h.send(hans, "PONG 1");
    h.advance(Duration::from_secs(6));
    assert_eq!(h.lines(hans), ["*PING 2"]);
    h.advance(Duration::from_secs(6));
    assert!(h.is_closed(hans), "an unanswered ping drops the connection");
    // An unauthenticated connection gets 30 s (the default pings would not drop it
    // sooner: 30 s of silence, then 30 s for the answer).
    let mut h = core();
    let idle = h.connect();
    h.advance(Duration::from_secs(29));
    assert!(!h.is_closed(idle));
    h.advance(Duration::from_secs(2));
    let got = h.lines(idle);
    assert!(got.contains(&"*BYE login-timeout".to_string()), "{got:?}");
    assert!(h.is_closed(idle));
}

#[test]
fn a_slow_reader_is_dropped_and_its_messages_kept() {
    let mut h = Harness::new(CoreConfig {
        max_queued: 4096,
        ..CoreConfig::default()
    });
    let hans = h.login("hans");
    let yoda = h.login("yoda");
    // yoda's output is never written: the queue grows past the limit.
    let big = "x".repeat(1000);
    let mut stuck = Vec::new();
    for i in 0..10 {
        h.core
            .handle_read(hans, format!("BCAST {i} {big}\n").as_bytes(), h.now);
        h.core.handle_timeout(h.now);
        h.core.poll_transmit(
            |k, b| {
                if k == yoda {
                    stuck.push(b.len());
                    Ok(0)
                } else {
                    Ok(b.len())
                }
            },
            h.now,
        );
    }
    h.settle();
    assert!(h.is_closed(yoda));
    assert_eq!(h.core.stats().slow_reader_kills, 1);
}

#[test]
fn a_reload_adds_changes_and_removes_accounts() {
    let mut h = core();
    let vader = h.login("vader");
    let hans = h.login("hans");
    h.lines(hans);
    h.lines(vader);
    let creds = vec![
        Credential {
            name: "hans".into(),
            password: "falcon*solo".into(),
        },
        Credential {
            name: "rey".into(),
            password: "new".into(),
        },
    ];
    assert_eq!(h.core.handle_reload(creds, h.now), (1, 4));
    h.settle();
    assert_eq!(h.lines(vader), ["*BYE removed"]);
    assert_eq!(h.lines(hans), ["*LOGOUT vader"]);
    assert_eq!(h.ask(hans, "MSG vader hi"), ["-NO_SUCH_USER vader"]);
    let k = h.hello();
    assert_eq!(h.ask(k, "LOGIN rey new"), ["+WELCOME"]);
}

/// What an idle connection costs in the core (docs/architecture.md, "Memory at rest",
/// adds up these sizes): a regression here is a regression of memory per user.
#[test]
fn an_idle_session_stays_small() {
    assert!(std::mem::size_of::<super::session::Session>() <= 256);
    assert!(std::mem::size_of::<crate::protocol::LineDecoder>() <= 40);
    assert!(std::mem::size_of::<super::outbox::Output>() <= 64);
    assert!(std::mem::size_of::<crate::server::flood::TokenBucket>() <= 16);
}
