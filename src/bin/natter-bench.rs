//! `natter-bench <SCENARIO> [options]`: the natter load generator.
//!
//! Scenarios: `direct`, `broadcast`, `login-storm`, `idle`, `churn`, `ceiling`, and
//! `gen-credentials N` to write the users the others log in as. Every run is bounded in
//! time and count and targets loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use natter::loadgen::{self, Mode, Options};
use natter::units::parse_duration;

/// Load generator for natterd.
#[derive(Parser, Debug)]
#[command(name = "natter-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N clients, each keeping W direct messages in flight to random others.
    Direct(Common),
    /// K senders broadcasting to N logged-in clients.
    Broadcast(Common),
    /// N clients connect and log in at once; time until every welcome and presence line.
    LoginStorm(Common),
    /// N idle logged-in clients: server RSS per connection and wake-ups per second.
    Idle(Common),
    /// Clients connect, log in, message, log out, repeatedly: RSS and fds before/after.
    Churn(Common),
    /// The `direct` traffic through a minimal in-process relay: the machine's ceiling.
    Ceiling(Common),
    /// Writes a credentials file with users `u0`..`u{N-1}` (passwords `p0`..).
    GenCredentials {
        n: usize,
        /// Output file (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// natterd's address (loopback only); a cluster's nodes comma-separated, clients
    /// are spread over them in turn.
    #[arg(long, default_value = "127.0.0.1:4000", value_delimiter = ',')]
    server: Vec<SocketAddr>,
    /// natterd's pid, to read its CPU time, RSS, wake-ups and fds from /proc (a
    /// cluster's nodes comma-separated: summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// The broker's pid (cluster mode): its CPU per delivery is reported too.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Clients (each logs in as `u<i>`).
    #[arg(long, short = 'n', default_value_t = 100)]
    clients: usize,
    /// Messages in flight per sending client.
    #[arg(long, short = 'w', default_value_t = 1)]
    window: u32,
    /// Broadcast senders.
    #[arg(long, short = 'k', default_value_t = 1)]
    senders: usize,
    /// Bytes of message text.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Event-loop threads in the generator.
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Warm-up before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measurement window (at most 1 hour).
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Longest wait for everyone to connect and log in.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    setup_timeout: Duration,
    /// direct: send to users `u<N>`..`u<2N-1>`, who stay offline, so every message is
    /// stored (measures the offline store path; "deliveries" then counts stored messages).
    #[arg(long)]
    offline: bool,
    /// Open loop: messages per second per sending client, spread evenly (the window
    /// still caps what is in flight). Without it each client sends as fast as replies
    /// come back.
    #[arg(long)]
    rate: Option<f64>,
    /// Skip the loss and duplicate check (saves memory on very long runs).
    #[arg(long)]
    no_check: bool,
    /// Number the clients' users from this one (`u<K>`, `u<K+1>`, ...), so two runs
    /// against one server use different accounts.
    #[arg(long, default_value_t = 0)]
    first_user: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Connect over TLS (any certificate accepted; no session resumption, so every
    /// login pays a full handshake).
    #[arg(long)]
    tls: bool,
}

const MAX_CLIENTS: usize = 100_000;

fn main() -> ExitCode {
    let cli: Cli = match natter::cli::parse_args("natter-bench") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (mode, c) = match cli.cmd {
        Cmd::GenCredentials { n, out } => {
            let result = match &out {
                Some(path) => std::fs::File::create(path)
                    .and_then(|mut f| loadgen::write_credentials(n, &mut f)),
                None => loadgen::write_credentials(n, &mut std::io::stdout()),
            };
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("natter-bench: error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Direct(c) => (Mode::Direct, c),
        Cmd::Broadcast(c) => (Mode::Broadcast, c),
        Cmd::LoginStorm(c) => (Mode::LoginStorm, c),
        Cmd::Idle(c) => (Mode::Idle, c),
        Cmd::Churn(c) => (Mode::Churn, c),
        Cmd::Ceiling(c) => (Mode::Ceiling, c),
    };
    if c.server.iter().any(|s| !s.ip().is_loopback()) {
        eprintln!("natter-bench: error: --server must be a loopback address (127.0.0.0/8 or ::1)");
        return ExitCode::from(2);
    }
    if c.clients == 0 || c.clients > MAX_CLIENTS || c.duration > Duration::from_secs(3600) {
        eprintln!(
            "natter-bench: error: --clients must be 1..={MAX_CLIENTS} and --duration at most 1h"
        );
        return ExitCode::from(2);
    }
    if mode == Mode::Ceiling && c.tls {
        eprintln!("natter-bench: error: ceiling measures the in-process relay, which has no TLS");
        return ExitCode::from(2);
    }
    if mode == Mode::Ceiling && c.clients % 2 == 1 {
        eprintln!("natter-bench: error: ceiling pairs clients: --clients must be even");
        return ExitCode::from(2);
    }
    let json = c.json;
    let opts = Options {
        mode,
        server: c.server,
        server_pid: c.server_pid,
        broker_pid: c.broker_pid,
        clients: c.clients,
        window: c.window.max(1),
        senders: c.senders.max(1),
        msg_size: c.size.clamp(32, 8000),
        threads: c.threads,
        warmup: c.warmup,
        duration: c.duration,
        setup_timeout: c.setup_timeout,
        check: !c.no_check,
        offline: c.offline && mode == Mode::Direct,
        rate: c.rate.filter(|r| *r > 0.0),
        tls: c.tls,
        first_user: c.first_user,
    };
    match loadgen::run(&opts) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("natter-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
