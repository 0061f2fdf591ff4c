//! `natter-bench`: the load generator (scenarios, orchestration, reports).
//!
//! The main thread only orchestrates: it starts worker threads (each its own
//! `mio::Poll` over a share of the clients, see `worker`), moves everyone through the
//! phases Setup -> Run (warm-up) -> Measure -> Drain -> Stop by setting one atomic, and
//! samples the server's `/proc/<pid>` files at the edges of the measurement window.
//! The `ceiling` scenario runs the same traffic through `relay`, an in-process relay
//! that does the least possible work, as the yardstick for everything else.

mod relay;
mod tls;
mod worker;

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Nanoseconds on a clock shared by every thread of this process.
pub fn mono_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each client keeps direct messages in flight to random others.
    Direct,
    /// Some clients broadcast to everyone.
    Broadcast,
    /// Everyone connects and logs in at once.
    LoginStorm,
    /// Clients log in and do nothing (memory and wake-ups at rest).
    Idle,
    /// Clients connect, log in and leave, over and over.
    Churn,
    /// The `direct` traffic through a minimal in-process relay: the floor.
    Ceiling,
}

impl Mode {
    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Broadcast => "broadcast",
            Mode::LoginStorm => "login-storm",
            Mode::Idle => "idle",
            Mode::Churn => "churn",
            Mode::Ceiling => "ceiling",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Connecting and logging in; nothing is sent.
    Setup = 0,
    /// Sending, not measured (warm-up).
    Run = 1,
    /// Sending and measuring.
    Measure = 2,
    /// No new messages; waiting for those in flight.
    Drain = 3,
    Stop = 4,
}

/// What every worker needs to know, fixed for the run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub mode: Mode,
    /// The servers (cluster nodes): client `i` connects to `addrs[i % len]`.
    pub addrs: Vec<SocketAddr>,
    pub clients: usize,
    pub window: u32,
    /// Broadcast: clients `0..senders` send.
    pub senders: usize,
    /// Bytes of message text.
    pub msg_size: usize,
    /// Keep every received id to count losses and duplicates.
    pub check: bool,
    /// Direct: send to users `clients..2*clients`, who never log in (stored messages).
    pub offline: bool,
    /// Open loop: messages per second per client (the window still caps what is in
    /// flight); `None` sends as fast as replies come back (closed loop).
    pub rate: Option<f64>,
    /// Connect over TLS with this configuration (`--tls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Client `i` is user `u<first_user + i>`.
    pub first_user: usize,
}

impl Plan {
    pub(crate) fn user(&self, idx: usize) -> String {
        format!("u{}", self.first_user + idx)
    }

    pub(crate) fn password(&self, idx: usize) -> String {
        format!("p{}", self.first_user + idx)
    }
}

/// Counters shared by the workers and the orchestrator.
#[derive(Default)]
pub(crate) struct Shared {
    phase: AtomicU8,
    pub logged_in: AtomicUsize,
    pub welcomes: AtomicU64,
    pub delivered: AtomicU64,
    pub accepted: AtomicU64,
    pub bcast_expected: AtomicU64,
    pub presence: AtomicU64,
    pub inflight: AtomicI64,
    pub errors: AtomicU64,
    pub cycles: AtomicU64,
    pub relay_cpu_start: AtomicU64,
    pub relay_cpu_end: AtomicU64,
}

impl Shared {
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Setup,
            1 => Phase::Run,
            2 => Phase::Measure,
            3 => Phase::Drain,
            _ => Phase::Stop,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }
}

/// A run's settings, validated by the binary.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scenario.
    pub mode: Mode,
    /// natterd's address (loopback only); several for a cluster's nodes, which the
    /// clients are spread over in turn.
    pub server: Vec<SocketAddr>,
    /// natterd's pid (one per node), to sample CPU, memory, wake-ups and descriptors
    /// (summed over the nodes).
    pub server_pid: Vec<u32>,
    /// The broker's pid (cluster mode), to report its CPU per delivery too.
    pub broker_pid: Option<u32>,
    /// Clients (each logs in as `u<i>`).
    pub clients: usize,
    /// Messages in flight per sending client.
    pub window: u32,
    /// Broadcast senders.
    pub senders: usize,
    /// Bytes of message text.
    pub msg_size: usize,
    /// Event-loop threads in the generator.
    pub threads: usize,
    /// Sending before measuring.
    pub warmup: Duration,
    /// The measurement window.
    pub duration: Duration,
    /// Longest wait for connecting and logging in everyone.
    pub setup_timeout: Duration,
    /// Keep every received id to count losses and duplicates.
    pub check: bool,
    /// Direct: send to users who never log in (every message is stored).
    pub offline: bool,
    /// Open loop: messages per second per client; `None` sends as fast as replies come.
    pub rate: Option<f64>,
    /// Connect over TLS (any certificate accepted: a benchmark measures, it does not
    /// trust; no session resumption, so every login pays a full handshake).
    pub tls: bool,
    /// The first client's user number (`u<first_user>`).
    pub first_user: usize,
}

/// What the server's `/proc` files say at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU time of the whole process, in seconds.
    pub cpu: f64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Of which anonymous (the heap and stacks, not code or mapped files), KiB.
    pub anon_kib: u64,
    /// The most resident memory so far, KiB.
    pub peak_rss_kib: u64,
    /// Context switches of the main (event-loop) thread: how often it slept and woke.
    pub switches: u64,
    /// Open file descriptors.
    pub fds: u64,
}

impl ProcSample {
    /// The sum over several processes (a cluster's nodes); `None` if there are none or
    /// one is gone.
    pub fn sum(pids: &[u32]) -> Option<ProcSample> {
        let mut total: Option<ProcSample> = None;
        for &pid in pids {
            let p = ProcSample::read(pid)?;
            let t = total.get_or_insert_with(ProcSample::default);
            t.cpu += p.cpu;
            t.rss_kib += p.rss_kib;
            t.anon_kib += p.anon_kib;
            t.peak_rss_kib += p.peak_rss_kib;
            t.switches += p.switches;
            t.fds += p.fds;
        }
        total
    }

    /// Reads `/proc/<pid>/...`; `None` if the process is gone.
    pub fn read(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        Some(ProcSample {
            // USER_HZ is 100 on every Linux the kernel ABI allows.
            cpu: ticks as f64 / 100.0,
            rss_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
            peak_rss_kib: field("VmHWM:"),
            switches: field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
            fds,
        })
    }
}

/// One value of a report.
#[derive(Debug, Clone)]
pub enum Value {
    /// A count.
    Int(u64),
    /// A rate or a time.
    Float(f64),
    /// Anything else.
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v:.3}"),
            Value::Text(v) => f.write_str(v),
        }
    }
}

/// A run's results, in order: printed as a table or as one JSON object.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// (name, value), in the order printed.
    pub fields: Vec<(&'static str, Value)>,
}

impl Report {
    fn int(&mut self, k: &'static str, v: u64) {
        self.fields.push((k, Value::Int(v)));
    }

    fn float(&mut self, k: &'static str, v: f64) {
        self.fields.push((k, Value::Float(v)));
    }

    fn text(&mut self, k: &'static str, v: impl Into<String>) {
        self.fields.push((k, Value::Text(v.into())));
    }

    /// The value of field `k`.
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v)
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{k}\":"));
            match v {
                Value::Int(n) => out.push_str(&n.to_string()),
                Value::Float(x) if x.is_finite() => out.push_str(&format!("{x:.3}")),
                Value::Float(_) => out.push_str("null"),
                Value::Text(t) => {
                    out.push('"');
                    for ch in t.chars() {
                        match ch {
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                            c => out.push(c),
                        }
                    }
                    out.push('"');
                }
            }
        }
        out.push('}');
        out
    }

    /// An aligned two-column table.
    pub fn to_table(&self) -> String {
        let w = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        self.fields
            .iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect()
    }
}

/// Writes `n` users `u0 p0` .. for the load generator.
pub fn write_credentials(n: usize, out: &mut impl Write) -> io::Result<()> {
    let mut w = io::BufWriter::new(out);
    for i in 0..n {
        writeln!(w, "u{i} p{i}")?;
    }
    w.flush()
}

/// Why a run could not be completed.
#[derive(Debug)]
pub enum BenchError {
    /// A socket, thread or file operation failed.
    Io(io::Error),
    /// Not everyone could connect and log in within the setup timeout.
    Setup {
        /// Clients logged in by the deadline.
        logged_in: usize,
        /// Clients asked for.
        wanted: usize,
    },
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Io(e) => write!(f, "{e}"),
            BenchError::Setup { logged_in, wanted } => write!(
                f,
                "only {logged_in} of {wanted} clients logged in within the setup timeout (is the server running with `natter-bench gen-credentials` users?)"
            ),
        }
    }
}

impl From<io::Error> for BenchError {
    fn from(e: io::Error) -> Self {
        BenchError::Io(e)
    }
}

/// Waits until `cond` holds or `limit` passes, showing `status` on a terminal.
fn wait_for(limit: Duration, progress: &Progress, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        progress.tick();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Two users from outside the scenario's range (`u<N>`, `u<N+1>`) log in (each seeing
/// the other arrive) and stay, answering pings, until the returned handle is dropped;
/// then a pause for the server to go quiet (it releases idle buffers 50 ms after
/// activity stops). The baseline taken after it is that of a server already serving
/// users: the code that serves them is resident, tables are warmed, and nothing is
/// given back for want of connections, so the per-connection figure is the cost of one
/// more idle user. If the accounts are missing, the probe only says hello.
fn probe(addr: SocketAddr, plan: &Plan) -> Probe {
    use std::io::{BufRead, BufReader, Write};
    let login = |idx: usize| -> Option<std::net::TcpStream> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let hello = format!("HELLO 1\nLOGIN {} {}\n", plan.user(idx), plan.password(idx));
        s.write_all(hello.as_bytes()).ok()?;
        let mut reader = BufReader::new(s.try_clone().ok()?);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).ok()? == 0 || line.starts_with('-') {
                return None;
            }
            if line.starts_with("+WELCOME") {
                break;
            }
        }
        // Answer liveness pings for as long as it stays.
        let mut pong = s.try_clone().ok()?;
        s.set_read_timeout(None).ok()?;
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                if let Some(seq) = line.trim_end().strip_prefix("*PING ") {
                    let _ = pong.write_all(format!("PONG {seq}\n").as_bytes());
                }
                line.clear();
            }
        });
        Some(s)
    };
    let users: Vec<_> = (plan.clients..plan.clients + 2).filter_map(login).collect();
    if users.is_empty()
        && let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"HELLO 1\n").is_ok() {
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    Probe(users)
}

/// The probe's connections; closed when dropped.
struct Probe(Vec<std::net::TcpStream>);

impl Drop for Probe {
    fn drop(&mut self) {
        for s in &self.0 {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A one-line progress display on stderr, when it is a terminal.
struct Progress {
    on: bool,
    label: &'static str,
    shared: Arc<Shared>,
    start: Instant,
    last: std::cell::Cell<Instant>,
}

impl Progress {
    fn tick(&self) {
        if !self.on || self.last.get().elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last.set(Instant::now());
        let s = &self.shared;
        eprint!(
            "\r\x1b[K{} {:?} {:.1}s: logged in {}, delivered {}, errors {}",
            self.label,
            s.phase(),
            self.start.elapsed().as_secs_f64(),
            s.logged_in.load(Ordering::Relaxed),
            s.delivered.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
        );
    }

    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

/// Runs one scenario and returns its report.
pub fn run(opts: &Options) -> Result<Report, BenchError> {
    let shared = Arc::new(Shared::default());
    let mut relay = None;
    let addr = if opts.mode == Mode::Ceiling {
        let (addr, handle) = relay::start(shared.clone())?;
        relay = Some(handle);
        vec![addr]
    } else {
        opts.server.clone()
    };
    let plan = Arc::new(Plan {
        mode: opts.mode,
        addrs: addr.clone(),
        clients: opts.clients,
        window: opts.window,
        senders: opts.senders.min(opts.clients),
        msg_size: opts.msg_size,
        check: opts.check && !opts.offline,
        offline: opts.offline,
        rate: opts.rate,
        first_user: opts.first_user,
        tls: if opts.tls {
            Some(tls::config().map_err(|e| BenchError::Io(io::Error::other(e)))?)
        } else {
            None
        },
    });
    let progress = Progress {
        on: io::stderr().is_terminal(),
        label: opts.mode.name(),
        shared: shared.clone(),
        start: Instant::now(),
        last: std::cell::Cell::new(Instant::now()),
    };
    let sample = || ProcSample::sum(&opts.server_pid);
    let broker = || opts.broker_pid.and_then(ProcSample::read);
    let at_start = sample();
    // A server's memory changes once it serves its first users (code paged in,
    // buffers sized, the allocator warmed up); measuring per-connection memory against
    // the untouched server would credit that change to the connections. Probe users
    // log in first and stay; let it go quiet, then take the baseline.
    let probes: Vec<Probe> = if opts.mode == Mode::Idle && at_start.is_some() {
        addr.iter().map(|&a| probe(a, &plan)).collect()
    } else {
        Vec::new()
    };
    let before_connect = sample();
    let t_start = Instant::now();

    // Workers: contiguous slices of the clients.
    let threads = opts.threads.clamp(1, opts.clients.max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let lo = opts.clients * t / threads;
        let hi = opts.clients * (t + 1) / threads;
        let (plan, shared) = (plan.clone(), shared.clone());
        let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(t as u64 + 1) ^ mono_ns();
        handles.push(
            std::thread::Builder::new()
                .name(format!("natter-bench-{t}"))
                .spawn(move || worker::run(plan, shared, lo, hi, seed))?,
        );
    }

    let mut report = Report::default();
    report.text("scenario", opts.mode.name());
    report.int("clients", opts.clients as u64);
    report.int("threads", threads as u64);

    let stop = |shared: &Shared| shared.set_phase(Phase::Stop);
    let n = opts.clients as u64;
    let everyone = || shared.logged_in.load(Ordering::Relaxed) >= opts.clients;

    if opts.mode == Mode::LoginStorm {
        let presence_wanted = n * n.saturating_sub(1) / 2;
        let welcomed = wait_for(opts.setup_timeout, &progress, || {
            shared.welcomes.load(Ordering::Relaxed) >= n
        });
        let t_welcome = t_start.elapsed();
        let presence_done = welcomed
            && wait_for(
                opts.setup_timeout.saturating_sub(t_welcome),
                &progress,
                || shared.presence.load(Ordering::Relaxed) >= presence_wanted,
            );
        let t_all = t_start.elapsed();
        let after = sample();
        stop(&shared);
        progress.done();
        report.int("welcomed", shared.welcomes.load(Ordering::Relaxed));
        report.float("all_welcomed_s", t_welcome.as_secs_f64());
        report.int("presence_expected", presence_wanted);
        report.int("presence_received", shared.presence.load(Ordering::Relaxed));
        report.text("complete", if presence_done { "yes" } else { "no" });
        report.float("all_presence_s", t_all.as_secs_f64());
        if let (Some(b), Some(a)) = (before_connect, after) {
            report.float("server_cpu_s", a.cpu - b.cpu);
            report.int("server_peak_rss_kib", a.peak_rss_kib);
        }
        report.int("errors", shared.errors.load(Ordering::Relaxed));
        join(handles)?;
        return Ok(report);
    }

    if !wait_for(opts.setup_timeout, &progress, everyone) {
        stop(&shared);
        let logged_in = shared.logged_in.load(Ordering::Relaxed);
        let _ = join(handles);
        return Err(BenchError::Setup {
            logged_in,
            wanted: opts.clients,
        });
    }
    report.float("setup_s", t_start.elapsed().as_secs_f64());

    match opts.mode {
        Mode::Idle => {
            let b = sample();
            shared.set_phase(Phase::Measure);
            let t0 = Instant::now();
            wait_for(opts.duration, &progress, || false);
            let secs = t0.elapsed().as_secs_f64();
            let a = sample();
            stop(&shared);
            drop(probes);
            progress.done();
            if let (Some(base), Some(b), Some(a)) = (before_connect, b, a) {
                if let Some(start) = at_start {
                    report.int("server_rss_at_start_kib", start.rss_kib);
                }
                report.int("server_rss_before_kib", base.rss_kib);
                report.int("server_rss_kib", a.rss_kib);
                report.float(
                    "server_rss_per_conn_bytes",
                    (a.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64 / n as f64,
                );
                report.float(
                    "server_anon_per_conn_bytes",
                    (a.anon_kib.saturating_sub(base.anon_kib) * 1024) as f64 / n as f64,
                );
                report.float(
                    "server_wakeups_per_s",
                    (a.switches - b.switches) as f64 / secs,
                );
                report.float("server_cpu_s", a.cpu - b.cpu);
            }
            report.float("idle_s", secs);
            report.int("errors", shared.errors.load(Ordering::Relaxed));
            join(handles)?;
            Ok(report)
        }
        Mode::Churn => {
            shared.set_phase(Phase::Measure);
            let t0 = Instant::now();
            wait_for(opts.duration, &progress, || false);
            let secs = t0.elapsed().as_secs_f64();
            shared.set_phase(Phase::Drain);
            let cycles = shared.cycles.load(Ordering::Relaxed);
            stop(&shared);
            join(handles)?;
            // Every client socket is closed now: wait for the server to let go too.
            let base = before_connect;
            let settled = wait_for(Duration::from_secs(5), &progress, || {
                match (base, sample()) {
                    (Some(b), Some(a)) => a.fds <= b.fds,
                    _ => true,
                }
            });
            progress.done();
            report.int("cycles", cycles);
            report.float("cycles_per_s", cycles as f64 / secs);
            if let (Some(b), Some(a)) = (base, sample()) {
                report.int("server_rss_before_kib", b.rss_kib);
                report.int("server_rss_after_kib", a.rss_kib);
                report.int("server_fds_before", b.fds);
                report.int("server_fds_after", a.fds);
                report.text("fds_settled", if settled { "yes" } else { "no" });
            }
            report.int("errors", shared.errors.load(Ordering::Relaxed));
            Ok(report)
        }
        Mode::Direct | Mode::Broadcast | Mode::Ceiling => {
            shared.set_phase(Phase::Run);
            wait_for(opts.warmup, &progress, || false);
            // Offline recipients never receive: count what the server stored instead.
            let counter = if opts.offline {
                &shared.accepted
            } else {
                &shared.delivered
            };
            let b = sample();
            let bb = broker();
            let d0 = counter.load(Ordering::Relaxed);
            shared.set_phase(Phase::Measure);
            let t0 = Instant::now();
            wait_for(opts.duration, &progress, || false);
            shared.set_phase(Phase::Drain);
            let secs = t0.elapsed().as_secs_f64();
            let d1 = counter.load(Ordering::Relaxed);
            let a = sample();
            let ba = broker();
            // Let what is in flight land, then compare what was sent and received.
            let broadcast = opts.mode == Mode::Broadcast;
            let drained = wait_for(Duration::from_secs(5), &progress, || {
                let expected = if broadcast {
                    shared.bcast_expected.load(Ordering::Relaxed)
                } else {
                    shared.accepted.load(Ordering::Relaxed)
                };
                shared.inflight.load(Ordering::Relaxed) <= 0
                    && (opts.offline || shared.delivered.load(Ordering::Relaxed) >= expected)
            });
            stop(&shared);
            progress.done();
            let results = join(handles)?;
            if let Some(r) = relay {
                let _ = r.join();
            }
            let deliveries = d1 - d0;
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
            let mut replies =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
            let mut received = Vec::new();
            let (mut accepted, mut bcast_expected) = (0, 0);
            for r in results {
                let _ = latency.add(&r.latency);
                let _ = replies.add(&r.reply_latency);
                received.extend(r.received);
                accepted += r.accepted;
                bcast_expected += r.bcast_expected;
            }
            if opts.mode != Mode::Broadcast {
                report.int("window", u64::from(opts.window));
            } else {
                report.int("senders", plan.senders as u64);
            }
            report.int("msg_bytes", opts.msg_size as u64);
            if opts.offline {
                report.text("recipients", "offline (stored)");
            }
            if let Some(r) = opts.rate {
                report.float("rate_per_client", r);
            }
            report.float("measured_s", secs);
            report.int("deliveries", deliveries);
            report.float("deliveries_per_s", deliveries as f64 / secs);
            if !opts.offline {
                report.float("p50_us", latency.value_at_quantile(0.5) as f64);
                report.float("p99_us", latency.value_at_quantile(0.99) as f64);
                report.float("p999_us", latency.value_at_quantile(0.999) as f64);
                report.float("max_us", latency.max() as f64);
            }
            if !replies.is_empty() {
                report.float("reply_p50_us", replies.value_at_quantile(0.5) as f64);
                report.float("reply_p99_us", replies.value_at_quantile(0.99) as f64);
            }
            let cpu = if opts.mode == Mode::Ceiling {
                let s = shared.relay_cpu_start.load(Ordering::Relaxed);
                let e = shared.relay_cpu_end.load(Ordering::Relaxed);
                Some(e.saturating_sub(s) as f64 / 1e9)
            } else {
                b.zip(a).map(|(b, a)| a.cpu - b.cpu)
            };
            if let Some(cpu) = cpu {
                report.float("server_cpu_s", cpu);
                report.float(
                    "server_cpu_us_per_delivery",
                    cpu * 1e6 / deliveries.max(1) as f64,
                );
            }
            if let (Some(b), Some(a)) = (bb, ba) {
                let cpu = a.cpu - b.cpu;
                report.float("broker_cpu_s", cpu);
                report.float(
                    "broker_cpu_us_per_delivery",
                    cpu * 1e6 / deliveries.max(1) as f64,
                );
            }
            if plan.check {
                let total = received.len() as u64;
                received.sort_unstable();
                received.dedup();
                let unique = received.len() as u64;
                let expected = if broadcast { bcast_expected } else { accepted };
                report.int("sent_accepted", accepted);
                report.int("received_total", total);
                report.int("lost", expected.saturating_sub(unique));
                report.int("duplicated", total - unique);
            }
            report.text("drained", if drained { "yes" } else { "no" });
            report.int("errors", shared.errors.load(Ordering::Relaxed));
            Ok(report)
        }
        Mode::LoginStorm => unreachable!("handled above"),
    }
}

fn join(
    handles: Vec<std::thread::JoinHandle<io::Result<worker::ThreadResult>>>,
) -> io::Result<Vec<worker::ThreadResult>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")))
        })
        .collect()
}
