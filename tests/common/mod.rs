//! Helpers for the end-to-end tests: start the real `natterd` on port 0, talk to it
//! over real TCP (raw protocol) or through real `natter` processes.
//!
//! Every wait is a wait for a condition with a deadline of a few seconds; nothing
//! sleeps for a fixed time to "let things settle".
#![allow(dead_code)]

pub mod pty;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub const CREDENTIALS: &str = "hans falcon*solo\nyoda wise@!man\nvader sithlord**\nr2d2 do*!bips\nc3po droid#gold\nluke jedi*knight\nleia princess$1\n";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch directory under the target dir.
pub fn scratch_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("natter-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The server's working directory: credentials, `natter-data/`, `natterd.log`.
    pub dir: PathBuf,
    args: Vec<String>,
    /// A command natterd is started under (e.g. `prlimit --fsize=N`), if any.
    wrapper: Vec<String>,
}

impl Server {
    /// Starts `natterd` with the standard test credentials and `args` (positionals first).
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(CREDENTIALS, args)
    }

    pub fn start_with(credentials: &str, args: &[&str]) -> Server {
        let dir = scratch_dir();
        std::fs::write(dir.join("credentials.txt"), credentials).expect("write credentials");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, addr) = Server::spawn(&dir, &args, &[]);
        Server {
            child,
            addr,
            dir,
            args,
            wrapper: Vec::new(),
        }
    }

    /// Runs `natterd` in `dir` (stderr appended to `dir/natterd.log`) and waits for its
    /// listening line.
    fn spawn(dir: &std::path::Path, args: &[String], wrapper: &[String]) -> (Child, SocketAddr) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("natterd.log"))
            .expect("open log");
        let bin = env!("CARGO_BIN_EXE_natterd");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--credentials")
            .arg(dir.join("credentials.txt"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn natterd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .strip_prefix("natterd listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(dir.join("natterd.log")).unwrap_or_default()
                )
            });
        (child, addr)
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server with SIGKILL and starts it again in the same directory with the
    /// same arguments (it gets a new port).
    pub fn restart(&mut self) {
        self.kill9();
        let (child, addr) = Server::spawn(&self.dir, &self.args, &self.wrapper);
        self.child = child;
        self.addr = addr;
    }

    /// Runs later starts under `wrapper` (empty: directly).
    pub fn set_wrapper(&mut self, wrapper: &[&str]) {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
    }

    /// Kills the server and runs `natterd` again in its directory with its arguments,
    /// expecting it to refuse to start: returns its exit code and stderr.
    pub fn restart_refused(&mut self) -> (i32, String) {
        self.kill9();
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let out = self.natterd_in_dir(&self.args.clone(), &wrapper);
        assert!(
            !out.stdout.contains("listening"),
            "natterd started: {}",
            out.stderr
        );
        (out.code, out.stderr)
    }

    /// Starts the server again (after [`Server::kill9`] or a refused start).
    pub fn start_again(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = Server::spawn(&self.dir, &self.args, &self.wrapper);
        self.child = child;
        self.addr = addr;
    }

    /// Runs `natterd <args>` to completion in the server's directory (a subcommand such
    /// as `journal check`, or a start expected to fail), with `prefix` as a wrapper
    /// command if given; the server's usual `--bind`/`--credentials` are added only to
    /// a server start.
    pub fn natterd_in_dir(&self, args: &[String], prefix: &[&str]) -> Output {
        let bin = env!("CARGO_BIN_EXE_natterd");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args);
        if args.first().is_none_or(|a| a != "journal") {
            cmd.arg("--bind")
                .arg("127.0.0.1")
                .arg("--credentials")
                .arg(self.dir.join("credentials.txt"));
        }
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn natterd");
        wait_with_timeout(child)
    }

    /// Everything the server (and its earlier runs) wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("natterd.log")).unwrap_or_default()
    }

    /// The journal file of the default data directory.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("natter-data").join("journal")
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        natter::loadgen::ProcSample::read(self.pid()).map_or(0, |p| p.rss_kib)
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }

    /// hans and yoda logged in over raw connections, hans's `*LOGIN yoda` consumed: the
    /// two-user setup most protocol tests start from.
    pub fn hans_and_yoda(&self) -> (Raw, Raw) {
        let mut hans = self.login("hans", "falcon*solo");
        let yoda = self.login("yoda", "wise@!man");
        hans.expect("*LOGIN yoda");
        (hans, yoda)
    }

    /// A raw connection that has done the handshake and logged in.
    pub fn login(&self, user: &str, password: &str) -> Raw {
        self.login_with(&format!("LOGIN {user} {password}"))
    }

    /// A raw connection that has done the handshake and logged in with `login` (a
    /// whole `LOGIN` line: with a peer port, a peer key, ...).
    pub fn login_with(&self, login: &str) -> Raw {
        let mut c = self.raw();
        c.send("HELLO 1");
        c.expect_prefix("+HELLO 1 ");
        c.send(login);
        c.expect("+WELCOME");
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- natterd log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw protocol connection.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A raw connection from a chosen loopback source address (`127.0.0.2`, ...), for
    /// tests of per-address limits and of what counts as remote.
    pub fn connect_from(src: &str, server: SocketAddr) -> Raw {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket,
        };
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        let src: SocketAddr = format!("{src}:0").parse().expect("source address");
        let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, server) else {
            panic!("IPv4 only")
        };
        bind(fd.as_raw_fd(), &SockaddrIn::from(src)).expect("bind");
        connect(fd.as_raw_fd(), &SockaddrIn::from(dst)).expect("connect");
        // SAFETY: `fd` is a connected TCP socket we own; ownership moves into the stream.
        Raw::from_stream(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        stream.set_nodelay(true).ok();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).expect("send");
        self.stream.write_all(b"\n").expect("send newline");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send bytes");
    }

    /// The next line, or None at EOF; panics after `WAIT`.
    pub fn next_line_within(&mut self, wait: Duration) -> Result<Option<String>, String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no line within {wait:?} (partial: {:?})",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }

    pub fn next_line(&mut self) -> String {
        match self.next_line_within(WAIT) {
            Ok(Some(l)) => l,
            Ok(None) => panic!("connection closed while waiting for a line"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Skips liveness pings (answering them) and returns the next other line.
    pub fn next_frame(&mut self) -> String {
        loop {
            let l = self.next_line();
            if let Some(seq) = l.strip_prefix("*PING ") {
                self.send(&format!("PONG {seq}"));
                continue;
            }
            return l;
        }
    }

    pub fn expect(&mut self, want: &str) {
        let got = self.next_frame();
        assert_eq!(got, want);
    }

    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        let got = self.next_frame();
        assert!(
            got.starts_with(prefix),
            "expected {prefix:?}..., got {got:?}"
        );
        got
    }

    /// Expects a direct message push with this sender and text; returns its id (and acks it).
    pub fn expect_msg(&mut self, from: &str, text: &str) -> u64 {
        let got = self.next_frame();
        let rest = got
            .strip_prefix("*MSG ")
            .unwrap_or_else(|| panic!("expected *MSG, got {got:?}"));
        let (id, body) = rest.split_once(' ').expect("id");
        assert_eq!(body, format!("{from} {text}"), "in {got:?}");
        let id: u64 = id.parse().expect("numeric id");
        self.send(&format!("ACK {id}"));
        id
    }

    /// Waits for the server to close the connection, returning the lines seen first.
    pub fn expect_closed(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.next_line_within(WAIT) {
                Ok(None) => return seen,
                Ok(Some(l)) => seen.push(l),
                Err(e) => panic!("connection not closed: {e}; saw {seen:?}"),
            }
        }
    }

    /// Sends a request and returns the next frame (its reply, unless a push came first).
    pub fn request(&mut self, line: &str) -> String {
        self.send(line);
        self.next_frame()
    }
}

/// A real `natter` client process with piped stdin and stdout.
pub struct Cli {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

/// Writes `line` and a newline to a client's stdin.
fn type_into(stdin: &mut Option<ChildStdin>, line: &str) {
    let stdin = stdin.as_mut().expect("stdin open");
    stdin.write_all(line.as_bytes()).expect("write stdin");
    stdin.write_all(b"\n").expect("write stdin");
    stdin.flush().ok();
}

/// `natter <ip> <port> <args>`, with `NATTER_PASSWORD` set to `password_env` or unset.
pub fn natter_command(addr: SocketAddr, args: &[&str], password_env: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
    cmd.arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(args)
        // Each client trusts on first use in a config directory of its own: test
        // servers come and go on reused ports with fresh certificates.
        .env("XDG_CONFIG_HOME", scratch_dir());
    match password_env {
        Some(p) => cmd.env("NATTER_PASSWORD", p),
        None => cmd.env_remove("NATTER_PASSWORD"),
    };
    cmd
}

impl Cli {
    /// Starts a client with `--quiet`: its stdout is then output lines only, one per line.
    pub fn start(server: &Server, args: &[&str], password_env: Option<&str>) -> Cli {
        let mut all = vec!["--quiet"];
        all.extend_from_slice(args);
        let mut cmd = natter_command(server.addr, &all, password_env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn natter");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Cli {
            child,
            stdin,
            lines: rx,
        }
    }

    /// Starts a client and logs in through the prompts (username and password on stdin).
    pub fn login(server: &Server, user: &str, password: &str) -> Cli {
        let mut c = Cli::start(server, &[], None);
        c.type_line(user);
        c.type_line(password);
        c.expect("Welcome to the greatest messaging application ever!");
        c
    }

    pub fn type_line(&mut self, line: &str) {
        type_into(&mut self.stdin, line);
    }

    /// Closes stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(WAIT) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("natter printed nothing within {WAIT:?}"),
        }
    }

    pub fn expect(&mut self, want: &str) {
        let got = self.next_line();
        assert_eq!(got.as_deref(), Some(want));
    }

    /// Expects these lines in any order (for output whose order the contract leaves open).
    pub fn expect_set(&mut self, want: &[&str]) {
        let mut got: Vec<String> = (0..want.len())
            .map(|_| self.next_line().unwrap_or_default())
            .collect();
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    /// Waits for the process to exit and for its output to end; returns the exit code
    /// and any lines printed that were not consumed yet.
    pub fn expect_exit(&mut self) -> (i32, Vec<String>) {
        let mut rest = Vec::new();
        while let Some(l) = self.next_line() {
            rest.push(l);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code().unwrap_or(-1), rest);
            }
            assert!(Instant::now() < deadline, "natter did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished process printed.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Waits (up to 10 s) for a child with piped stdout and stderr to finish.
pub fn wait_with_timeout(mut child: Child) -> Output {
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Polls `cond` until it holds or `WAIT` passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Raw {
    /// Asserts that nothing was queued for this connection before now: a `PING` round
    /// trip is answered in order, so anything pushed earlier would arrive first.
    pub fn expect_nothing_pending(&mut self) {
        self.send("PING marker");
        self.expect("+PONG marker");
    }
}

impl Raw {
    /// Expects a frame starting with one of `prefixes`.
    pub fn expect_prefix_any(&mut self, prefixes: &[&str]) -> String {
        let got = self.next_frame();
        assert!(
            prefixes.iter().any(|p| got.starts_with(p)),
            "expected one of {prefixes:?}, got {got:?}"
        );
        got
    }
}

/// A real `natter` client whose stdout is kept byte for byte (prompts included), for
/// asserting on exactly what a script reading its pipe sees.
pub struct PromptCli {
    pub child: Child,
    stdin: Option<ChildStdin>,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Set by the reader thread at the end of the output.
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: usize,
}

impl PromptCli {
    /// Starts `natter` against `addr` with `args` (no `--quiet`).
    pub fn start(addr: SocketAddr, args: &[&str], password_env: Option<&str>) -> PromptCli {
        let mut cmd = natter_command(addr, args, password_env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn natter");
        let mut stdout = child.stdout.take().expect("stdout");
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = output.clone();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let end = ended.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            end.store(true, Ordering::SeqCst);
        });
        let stdin = child.stdin.take();
        PromptCli {
            child,
            stdin,
            output,
            ended,
            seen: 0,
        }
    }

    pub fn type_line(&mut self, line: &str) {
        type_into(&mut self.stdin, line);
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Writes `bytes` to stdin from a thread (ignoring a closed pipe), then closes it.
    pub fn feed_stdin(&mut self, bytes: Vec<u8>) {
        let mut stdin = self.stdin.take().expect("stdin open");
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far, lossily decoded.
    pub fn all_output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Expects exactly `want` to be the next bytes printed.
    pub fn expect_output(&mut self, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.output.lock().unwrap().clone();
            let got = &out[self.seen.min(out.len())..];
            if got.len() >= want.len() {
                assert_eq!(
                    String::from_utf8_lossy(&got[..want.len()]),
                    want,
                    "after {:?}",
                    String::from_utf8_lossy(&out[..self.seen])
                );
                self.seen += want.len();
                return;
            }
            assert!(
                Instant::now() < deadline && want.as_bytes().starts_with(got),
                "expected {want:?}, got {:?}",
                String::from_utf8_lossy(got)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the exit; returns its code and the output not asserted on yet.
    pub fn expect_exit(&mut self) -> (i32, String) {
        self.expect_exit_within(WAIT)
    }

    pub fn expect_exit_within(&mut self, wait: Duration) -> (i32, String) {
        let deadline = Instant::now() + wait;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "natter did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        wait_until("the end of natter's output", || {
            self.ended.load(Ordering::SeqCst)
        });
        let out = self.output.lock().unwrap().clone();
        let rest = String::from_utf8_lossy(&out[self.seen.min(out.len())..]).into_owned();
        self.seen = out.len();
        (code, rest)
    }
}

impl Drop for PromptCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scripted stand-in for natterd (or a peer), for what the real server never does:
/// the test accepts the client's connection and answers line by line.
pub struct FakeServer {
    pub listener: std::net::TcpListener,
}

impl FakeServer {
    pub fn bind() -> FakeServer {
        FakeServer {
            listener: std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake server"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("local addr")
    }

    /// Shrinks the receive buffer of the connections it accepts (inherited from the
    /// listener), so a server that stops reading is felt after kilobytes, not megabytes.
    pub fn small_receive_buffer(&self) {
        nix::sys::socket::setsockopt(&self.listener, nix::sys::socket::sockopt::RcvBuf, &4096)
            .expect("SO_RCVBUF");
    }

    /// Accepts the client's connection.
    pub fn accept(&self) -> Raw {
        self.listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let deadline = Instant::now() + WAIT;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking stream");
                    return Raw::from_stream(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the client did not connect");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// Accepts the client and plays natterd's side of a login as `user` (the client
    /// runs with `--user user` and a password in the environment); returns the
    /// connection and the peer port the client reported.
    pub fn accept_login(&self, user: &str) -> (Raw, Option<u16>) {
        let mut c = self.accept();
        assert_eq!(c.next_line(), "HELLO 1");
        assert_eq!(c.next_line(), format!("USER {user}"));
        c.send("+HELLO 1 fake/1 30");
        c.send(&format!("+USER {user}"));
        let pass = c.next_line();
        let port = pass
            .strip_prefix("PASS ")
            .and_then(|rest| rest.split(' ').nth(1))
            .and_then(|p| p.parse().ok());
        c.send("+WELCOME");
        (c, port)
    }
}

/// Logs in, stores an `END` marker for `to` and logs out, so that a reader of `to`'s
/// backlog knows where it ends without waiting for silence.
pub fn send_end_marker(s: &Server, to: &str) {
    let mut c = s.login("c3po", "droid#gold");
    assert_eq!(c.request(&format!("MSG {to} END")), format!("+STORED {to}"));
    c.send("LOGOUT");
    c.expect_closed();
}

/// Logs `user` in and reads (acknowledging) direct messages up to the `END` marker;
/// returns the texts of those before it, with their senders checked.
pub fn drain_until_end(s: &Server, user: &str, password: &str, from: &str) -> Vec<String> {
    let mut c = s.login(user, password);
    let mut texts = Vec::new();
    loop {
        let line = c.next_frame();
        let Some(rest) = line.strip_prefix("*MSG ") else {
            if line.starts_with("*LOGIN ") || line.starts_with("*LOGOUT ") {
                continue;
            }
            panic!("unexpected {line:?}");
        };
        let (id, body) = rest.split_once(' ').expect("id");
        c.send(&format!("ACK {id}"));
        if body == "c3po END" {
            return texts;
        }
        let text = body
            .strip_prefix(&format!("{from} "))
            .unwrap_or_else(|| panic!("unexpected sender in {line:?}"));
        texts.push(text.to_string());
    }
}

/// Reads one line from a peer connection (plain or TLS), or None when the other end
/// closed, reset or failed the handshake; panics on a read timeout.
pub fn read_peer_line(stream: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => panic!("peer read: {e}"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => panic!("peer read: {e}"),
            Err(_) => return None,
        }
    }
}

/// Asks natterd for its counters (SIGUSR1) and returns the value of `name` from the
/// newest stats line in its log.
pub fn counter(s: &Server, name: &str) -> u64 {
    let before = s.log().matches("stats:").count();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("SIGUSR1");
    wait_until("a stats line", || {
        s.log().matches("stats:").count() > before
    });
    let log = s.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stats:"))
        .unwrap_or("");
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// Server-side TCP connections on `port` in the kernel (accepted or still in the
/// listen queue) that have bytes waiting to be read, from /proc/net/tcp.
pub fn connections_with_input(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let rx_queue = f
                .get(4)
                .and_then(|q| q.split(':').nth(1))
                .and_then(|q| usize::from_str_radix(q, 16).ok());
            local_port == Some(port) && f.get(3) == Some(&"01") && rx_queue.unwrap_or(0) > 0
        })
        .count()
}
