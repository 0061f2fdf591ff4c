//! Cluster mode's chat rules, driven through the core's boundary: several cores joined
//! by a fake broker that does what JetStream does for us (one ordered stream, a
//! compare-and-set on each subject's last sequence, acknowledgements per batch,
//! broadcasts to every node, introductions to one node). No sockets, a fake clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::cluster::{IntroAnswer, Op};
use super::{Core, CoreConfig};
use crate::server::cluster::record::Rec;

use super::tests::{USERS, credentials};

struct Node {
    core: Core,
    inc: u64,
    out: HashMap<usize, Vec<u8>>,
    /// Batches taken from the core and not yet handled by the broker.
    pending: Vec<(u64, Vec<Op>)>,
    /// How far into the stream this node has applied.
    applied: usize,
}

/// The fake broker and its nodes.
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    log: Vec<(u64, Rec)>,
    /// Last (sequence, record) per subject: what a compare-and-set compares with.
    last: HashMap<String, (u64, Rec)>,
    /// While down, nothing reaches the broker (batches wait, as the real connection's do).
    down: bool,
}

impl Net {
    fn new(n: usize) -> Net {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let mut core = Core::in_memory(credentials(), CoreConfig::default(), now);
                let inc = 1000 + i as u64;
                core.join_cluster(&format!("n{i}"), inc);
                Node {
                    core,
                    inc,
                    out: HashMap::new(),
                    pending: Vec::new(),
                    applied: 0,
                }
            })
            .collect();
        Net {
            nodes,
            now,
            log: Vec::new(),
            last: HashMap::new(),
            down: false,
        }
    }

    /// Runs every node's loop and the broker until nothing moves.
    fn settle(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            for n in &mut self.nodes {
                n.core.handle_timeout(self.now);
                while let Some(b) = n.core.poll_cluster(self.now) {
                    n.pending.push(b);
                }
            }
            if !self.down {
                for i in 0..self.nodes.len() {
                    let batches = std::mem::take(&mut self.nodes[i].pending);
                    for (batch, ops) in batches {
                        moved = true;
                        for op in ops {
                            self.broker(i, op);
                        }
                        self.nodes[i].core.handle_durable(batch);
                    }
                }
                for n in &mut self.nodes {
                    for (seq, rec) in &self.log[n.applied..] {
                        moved = true;
                        n.core.handle_cluster_record(*seq, rec.clone(), self.now);
                    }
                    n.applied = self.log.len();
                }
            }
            for n in &mut self.nodes {
                super::tests::transmit(&mut n.core, &mut n.out, self.now);
                while n.core.poll_resumed().is_some() {}
                while n.core.poll_closed().is_some() {}
                moved |= n.core.poll_timeout().is_some_and(|t| t <= self.now);
            }
            if !moved {
                return;
            }
        }
    }

    fn broker(&mut self, from: usize, op: Op) {
        match op {
            Op::Publish { rec, expect } => {
                let subject = rec.subject();
                let current = self.last.get(&subject).cloned();
                let last = current.as_ref().map_or(0, |(s, _)| *s);
                if expect.is_some_and(|e| e != last) {
                    if let Rec::Login { serial, .. } = rec {
                        self.nodes[from]
                            .core
                            .handle_claim_conflict(serial, current, self.now);
                    }
                    return;
                }
                let seq = self.log.len() as u64 + 1;
                self.last.insert(subject, (seq, rec.clone()));
                self.log.push((seq, rec));
            }
            Op::Broadcast { from, text } => {
                for n in &mut self.nodes {
                    n.core.handle_cluster_broadcast(&from, &text, self.now);
                }
            }
            Op::Probe { id, inc } => {
                let alive = self.nodes.iter().any(|n| n.inc == inc);
                self.nodes[from]
                    .core
                    .handle_probe_answer(id, alive, self.now);
            }
            Op::Intro {
                id,
                inc,
                from: caller,
                to,
                key,
            } => {
                let answer = match self.nodes.iter_mut().find(|n| n.inc == inc) {
                    Some(n) => n.core.handle_intro_request(&caller, &to, &key),
                    None => IntroAnswer::Offline,
                };
                self.nodes[from]
                    .core
                    .handle_intro_answer(id, answer, self.now);
            }
        }
    }

    fn connect(&mut self, node: usize, ip: &str) -> usize {
        let addr: SocketAddr = format!("{ip}:40000").parse().expect("address");
        let key = self.nodes[node].core.handle_accept(addr, self.now);
        self.nodes[node].out.insert(key, Vec::new());
        self.send(node, key, "HELLO 1");
        self.lines(node, key);
        key
    }

    fn send(&mut self, node: usize, key: usize, line: &str) {
        self.nodes[node]
            .core
            .handle_read(key, format!("{line}\n").as_bytes(), self.now);
        self.settle();
    }

    fn lines(&mut self, node: usize, key: usize) -> Vec<String> {
        let bytes = std::mem::take(self.nodes[node].out.entry(key).or_default());
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn ask(&mut self, node: usize, key: usize, line: &str) -> Vec<String> {
        self.lines(node, key);
        self.send(node, key, line);
        self.lines(node, key)
    }

    fn login(&mut self, node: usize, user: &str) -> usize {
        let pw = USERS.iter().find(|(u, _)| *u == user).expect("user").1;
        let k = self.connect(node, "127.0.0.1");
        let got = self.ask(node, k, &format!("LOGIN {user} {pw} 4100"));
        assert_eq!(got.first().map(String::as_str), Some("+WELCOME"), "{got:?}");
        k
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.settle();
    }
}

fn none() -> Vec<String> {
    Vec::new()
}

#[test]
fn messages_cross_nodes_and_wait_offline_for_a_login_anywhere() {
    let mut net = Net::new(3);
    let hans = net.login(0, "hans");
    let yoda = net.login(1, "yoda");
    assert_eq!(net.lines(0, hans), ["*LOGIN yoda"]);
    assert_eq!(net.ask(0, hans, "MSG yoda hello   there"), ["+SENT yoda"]);
    let got = net.lines(1, yoda);
    assert_eq!(got.len(), 1);
    assert!(got[0].ends_with(" hans hello   there"), "{got:?}");
    // Offline: stored in the cluster, delivered in order on whichever node.
    assert_eq!(net.ask(1, yoda, "MSG leia one"), ["+STORED leia"]);
    assert_eq!(net.ask(0, hans, "MSG leia two"), ["+STORED leia"]);
    let k = net.connect(2, "127.0.0.1");
    let got = net.ask(2, k, "LOGIN leia princess$1");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], "+WELCOME");
    assert!(got[1].ends_with(" yoda one") && got[2].ends_with(" hans two"));
    // Acknowledged on node 2: no other replica delivers them again.
    let last: u64 = got[2]
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("id");
    net.send(2, k, &format!("ACK {last}"));
    net.send(2, k, "LOGOUT");
    let k = net.connect(0, "127.0.0.1");
    assert_eq!(net.ask(0, k, "LOGIN leia princess$1"), ["+WELCOME"]);
}

#[test]
fn unacknowledged_messages_come_back_at_the_next_login_elsewhere() {
    let mut net = Net::new(2);
    let hans = net.login(0, "hans");
    let yoda = net.login(1, "yoda");
    net.send(0, hans, "MSG yoda keep me");
    assert_eq!(net.lines(1, yoda).len(), 1);
    // Not acknowledged, and yoda's node drops its session.
    net.send(1, yoda, "LOGOUT");
    let k = net.connect(0, "127.0.0.1");
    let got = net.ask(0, k, "LOGIN yoda wise@!man");
    assert_eq!(got[0], "+WELCOME");
    assert!(got[1].ends_with(" hans keep me"), "{got:?}");
}

#[test]
fn a_second_login_is_refused_cluster_wide_even_when_racing() {
    let mut net = Net::new(2);
    let first = net.login(0, "hans");
    let k = net.connect(1, "127.0.0.1");
    assert_eq!(net.ask(1, k, "USER hans"), ["-ALREADY_ONLINE"]);
    let k = net.connect(1, "127.0.0.1");
    assert_eq!(net.ask(1, k, "LOGIN hans falcon*solo"), ["-ALREADY_ONLINE"]);
    assert_eq!(net.ask(0, first, "WHOELSE"), ["+USERS"]);
    // Two nodes claim yoda in the same round: the broker lets exactly one win.
    let a = net.connect(0, "127.0.0.1");
    let b = net.connect(1, "127.0.0.1");
    net.nodes[0]
        .core
        .handle_read(a, b"LOGIN yoda wise@!man\n", net.now);
    net.nodes[1]
        .core
        .handle_read(b, b"LOGIN yoda wise@!man\n", net.now);
    net.settle();
    let (ra, rb) = (net.lines(0, a), net.lines(1, b));
    let won = [&ra, &rb]
        .iter()
        .filter(|r| r.first().map(String::as_str) == Some("+WELCOME"))
        .count();
    let lost = [&ra, &rb]
        .iter()
        .filter(|r| r.first().map(String::as_str) == Some("-ALREADY_ONLINE"))
        .count();
    assert_eq!((won, lost), (1, 1), "{ra:?} {rb:?}");
    assert_eq!(net.lines(0, first), ["*LOGIN yoda"]);
}

#[test]
fn a_logout_not_yet_applied_does_not_refuse_the_next_login() {
    let mut net = Net::new(2);
    let hans = net.login(0, "hans");
    net.login(1, "yoda");
    // Node 0 stops hearing the stream for a moment: its replica still shows hans
    // online when he logs in again there right after logging out.
    net.send(0, hans, "LOGOUT");
    let k = net.connect(0, "127.0.0.1");
    assert_eq!(net.ask(0, k, "LOGIN hans falcon*solo"), ["+WELCOME"]);
    // Now the same through a real conflict: node 1 publishes the claim while its
    // replica is one logout behind.
    net.send(0, k, "LOGOUT");
    let applied = net.nodes[1].applied;
    let seq = net.log.len();
    net.nodes[1].applied = applied.min(seq - 1);
    let k = net.connect(1, "127.0.0.1");
    assert_eq!(net.ask(1, k, "LOGIN hans falcon*solo"), ["+WELCOME"]);
}

#[test]
fn three_wrong_passwords_on_three_nodes_lock_everywhere() {
    let mut net = Net::new(3);
    let k = net.connect(0, "10.0.0.1");
    assert_eq!(net.ask(0, k, "LOGIN vader a"), ["-BAD_PASSWORD 2"]);
    let k = net.connect(1, "10.0.0.2");
    assert_eq!(net.ask(1, k, "LOGIN vader b"), ["-BAD_PASSWORD 1"]);
    let k = net.connect(2, "10.0.0.3");
    assert_eq!(net.ask(2, k, "LOGIN vader c"), ["-LOCKED_NOW"]);
    for node in 0..3 {
        let k = net.connect(node, "10.0.0.4");
        assert_eq!(net.ask(node, k, "LOGIN vader sithlord**"), ["-LOCKED"]);
    }
    net.advance(Duration::from_secs(61));
    let k = net.connect(1, "10.0.0.5");
    assert_eq!(net.ask(1, k, "LOGIN vader sithlord**"), ["+WELCOME"]);
    // The success reset the count on every node.
    net.send(1, k, "LOGOUT");
    let k = net.connect(2, "10.0.0.5");
    assert_eq!(net.ask(2, k, "LOGIN vader x"), ["-BAD_PASSWORD 2"]);
}

#[test]
fn presence_broadcast_and_blocks_hold_across_nodes() {
    let mut net = Net::new(2);
    let hans = net.login(0, "hans");
    let luke = net.login(1, "luke");
    let yoda = net.login(1, "yoda");
    assert_eq!(net.ask(1, luke, "BLOCK hans"), ["+BLOCKED hans"]);
    net.lines(0, hans);
    net.lines(1, yoda);
    assert_eq!(net.ask(0, hans, "BCAST hi all"), ["+BCAST 1 1"]);
    assert_eq!(net.lines(1, yoda), ["*BCAST hans hi all"]);
    assert_eq!(net.lines(1, luke), none());
    assert_eq!(net.ask(0, hans, "MSG luke hi"), ["-BLOCKED_BY luke"]);
    assert_eq!(net.ask(0, hans, "PRIVATE luke"), ["-BLOCKED_BY luke"]);
    assert_eq!(net.ask(0, hans, "WHOELSE"), ["+USERS yoda"]);
    // hans never sees luke come or go; yoda does.
    net.send(1, luke, "LOGOUT");
    assert_eq!(net.lines(0, hans), none());
    assert_eq!(net.lines(1, yoda), ["*LOGOUT luke"]);
    net.advance(Duration::from_secs(10));
    assert_eq!(net.ask(1, yoda, "WHOELSESINCE 60"), ["+USERS hans luke"]);
    assert_eq!(net.ask(1, yoda, "WHOELSESINCE 5"), ["+USERS hans"]);
    let luke = net.login(0, "luke");
    assert_eq!(net.ask(0, luke, "UNBLOCK hans"), ["+UNBLOCKED hans"]);
    assert_eq!(net.ask(0, hans, "MSG luke hi"), ["+SENT luke"]);
    assert_eq!(net.ask(0, luke, "UNBLOCK hans"), ["-NOT_BLOCKED hans"]);
}

#[test]
fn a_private_introduction_comes_from_the_targets_node() {
    let mut net = Net::new(2);
    let hans = net.login(0, "hans");
    let yoda = net.connect(1, "127.0.0.9");
    net.send(1, yoda, "LOGIN yoda wise@!man 4242 yodakey");
    net.lines(0, hans);
    net.lines(1, yoda);
    let got = net.ask(0, hans, "PRIVATE yoda");
    assert_eq!(got.len(), 1);
    let f: Vec<&str> = got[0].split(' ').collect();
    assert_eq!(&f[..4], ["+PEER", "yoda", "127.0.0.9", "4242"], "{got:?}");
    let exp = net.lines(1, yoda);
    assert_eq!(exp, [format!("*EXPECT hans {}", f[4])]);
    // Gone from the target's node meanwhile: offline.
    net.send(1, yoda, "LOGOUT");
    assert_eq!(net.ask(0, hans, "PRIVATE yoda"), ["-OFFLINE yoda"]);
}

#[test]
fn a_gone_nodes_users_are_logged_out_and_may_log_in_elsewhere_at_once() {
    let mut net = Net::new(2);
    let hans = net.login(0, "hans");
    let yoda = net.login(1, "yoda");
    assert_eq!(net.ask(0, hans, "MSG yoda unacked"), ["+SENT yoda"]);
    assert_eq!(net.lines(1, yoda).len(), 1);
    // Node 1 dies; node 0 notices its silence.
    let dead = net.nodes.remove(1);
    assert_eq!(
        net.nodes[0].core.cluster_incarnations(),
        [(dead.inc, "n1".into())]
    );
    net.nodes[0].core.handle_node_gone(dead.inc, net.now);
    net.settle();
    assert_eq!(net.lines(0, hans), ["*LOGOUT yoda"]);
    let k = net.connect(0, "127.0.0.1");
    let got = net.ask(0, k, "LOGIN yoda wise@!man");
    assert_eq!(got[0], "+WELCOME");
    assert!(got[1].ends_with(" hans unacked"), "{got:?}");
}

#[test]
fn while_the_broker_is_away_nothing_is_promised_and_nothing_is_lost() {
    let mut net = Net::new(2);
    let hans = net.login(0, "hans");
    let yoda = net.login(1, "yoda");
    net.lines(1, yoda);
    // A message whose batch has not reached the broker: no +SENT yet.
    net.down = true;
    assert_eq!(net.ask(0, hans, "MSG yoda in flight"), none());
    // The connection is known to be down: refused at once, clearly.
    net.nodes[0].core.handle_store_health(false);
    assert_eq!(net.ask(0, hans, "MSG yoda later"), none());
    net.down = false;
    net.settle();
    assert_eq!(net.lines(0, hans), ["+SENT yoda", "-STORE_UNAVAILABLE"]);
    let got = net.lines(1, yoda);
    assert!(
        got.len() == 1 && got[0].ends_with(" hans in flight"),
        "{got:?}"
    );
    assert_eq!(net.ask(0, hans, "BLOCK yoda"), ["-STORE_UNAVAILABLE"]);
    assert_eq!(net.ask(0, hans, "WHOELSE"), ["+USERS yoda"]);
    net.nodes[0].core.handle_store_health(true);
    assert_eq!(net.ask(0, hans, "BLOCK yoda"), ["+BLOCKED yoda"]);
}

#[test]
fn a_node_cut_off_too_long_finds_its_users_logged_out_and_says_so() {
    let mut net = Net::new(2);
    let hans = net.login(0, "hans");
    let yoda = net.login(1, "yoda");
    net.lines(0, hans);
    // Node 0 presumes node 1 gone (as after 5 s without its heartbeats)...
    let inc = net.nodes[1].inc;
    net.nodes[0].core.handle_node_gone(inc, net.now);
    net.settle();
    assert_eq!(net.lines(0, hans), ["*LOGOUT yoda"]);
    // ...and node 1, hearing the stream again, ends yoda's session there too.
    assert_eq!(net.lines(1, yoda), ["*BYE cluster-lost"]);
    // Reported twice (two nodes noticing): one logout between them.
    net.nodes[0].core.handle_node_gone(inc, net.now);
    net.settle();
    assert_eq!(net.lines(0, hans), none());
    // yoda logs in again, on the same node or another.
    net.login(1, "yoda");
    assert_eq!(net.lines(0, hans), ["*LOGIN yoda"]);
}

#[test]
fn a_user_whose_node_just_died_logs_in_elsewhere_at_once() {
    let mut net = Net::new(3);
    let hans = net.login(0, "hans");
    let yoda = net.login(1, "yoda");
    net.lines(0, hans);
    assert_eq!(net.ask(0, hans, "MSG yoda unacked"), ["+SENT yoda"]);
    assert_eq!(net.lines(1, yoda).len(), 1);
    // Node 1 dies; nobody has noticed its silence yet. yoda tries node 2 at once: the
    // username step asks whether node 1 is still there, learns it is not, and goes on.
    net.nodes.remove(1);
    let k = net.connect(1, "127.0.0.1");
    assert_eq!(net.ask(1, k, "USER yoda"), ["+USER yoda"]);
    let got = net.ask(1, k, "PASS wise@!man");
    assert_eq!(got[0], "+WELCOME", "{got:?}");
    assert!(got[1].ends_with(" hans unacked"), "{got:?}");
    assert_eq!(net.lines(0, hans), ["*LOGOUT yoda", "*LOGIN yoda"]);
    // A live node is not second-guessed: hans is online on node 0.
    let k = net.connect(1, "127.0.0.1");
    assert_eq!(net.ask(1, k, "USER hans"), ["-ALREADY_ONLINE"]);
    let k = net.connect(1, "127.0.0.1");
    assert_eq!(net.ask(1, k, "LOGIN hans falcon*solo"), ["-ALREADY_ONLINE"]);
}
