//! `natterd [PORT] [BLOCK_DURATION] [TIMEOUT] [options]`: the natter server.
//! `natterd hash-password`: prints an argon2id hash for `credentials.txt`.
//! `natterd journal check|repair [--data-dir DIR]`: inspects or repairs a damaged journal.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// mimalloc gives freed memory back to the kernel; glibc's malloc keeps the high-water
/// mark of a login storm's presence buffers as RSS for the life of the process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs when the event loop goes quiet: mimalloc returns freed pages to the kernel
/// only during later allocator calls, which an idle server does not make. Code that
/// start-up or earlier clients used is unmapped at the first quiet moment and whenever
/// the server has gone quiet with nobody connected, at most twice a second: an empty
/// server holds only what it needs to wait. After unmapping, it asks to be called once
/// more half a second later (threads finishing their start, a connection's last steps), and
/// nothing more: an empty, quiet server is not woken again.
fn release_memory(quiet: Quiet) -> Option<Duration> {
    const EVERY: Duration = Duration::from_millis(500);
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it is safe to
    // call from any thread at any time (it only walks mimalloc's own structures).
    unsafe { libmimalloc_sys::mi_collect(true) }
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().ok()?;
    let now = std::time::Instant::now();
    let since = last.map(|at| now.saturating_duration_since(at));
    if since.is_some() && quiet.connections > 0 {
        return None;
    }
    match since {
        Some(since) if since < EVERY && !quiet.recheck => Some(EVERY - since),
        _ => {
            *last = Some(now);
            natter::server::memory::unmap_clean_code();
            Some(EVERY)
        }
    }
}

use natter::server::event_loop::{Limits, Quiet, StoreConfig};
use natter::server::store::FsyncPolicy;
use natter::server::tls::CertSource;
use natter::server::{self, Config, CoreConfig, LockoutScope};
use natter::units::{parse_duration, parse_size};

/// The natter instant-messaging server.
#[derive(Parser, Debug)]
#[command(name = "natterd", version, about)]
struct Args {
    /// TCP port to listen on (0 picks a free one).
    #[arg(default_value_t = 4000)]
    port: u16,
    /// How long an account stays locked after 3 wrong passwords (seconds or e.g. `90s`, `5m`).
    #[arg(default_value = "60", value_parser = parse_duration)]
    block_duration: Duration,
    /// Inactivity timeout before a user is logged out (seconds or e.g. `10m`).
    #[arg(default_value = "600", value_parser = parse_duration)]
    timeout: Duration,
    /// The accounts file: `username password` per line.
    #[arg(long, default_value = "credentials.txt")]
    credentials: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Longest request line in bytes, newline excluded (e.g. `8192`, `8K`).
    #[arg(long, default_value = "8K", value_parser = parse_size)]
    max_line: usize,
    /// Output queued for one connection before it is disconnected as a slow reader.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    max_queued: usize,
    /// Most simultaneous connections (default: the open-file limit minus 64).
    #[arg(long)]
    max_connections: Option<usize>,
    /// How long a new connection may take to log in.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    login_timeout: Duration,
    /// Silence after which the server pings a connection.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ping_timeout: Duration,
    /// Direct messages in flight (sent, not yet acknowledged) per connection.
    #[arg(long, default_value_t = 64)]
    ack_window: usize,
    /// Messages a user's offline mailbox holds at most.
    #[arg(long, default_value_t = 10_000)]
    mailbox_max_messages: usize,
    /// Bytes of message text a user's offline mailbox holds at most.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    mailbox_max_bytes: usize,
    /// Percent of a mailbox's caps one sender may fill (100: no per-sender limit), so
    /// one sender cannot make the mailbox full for everyone else.
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u32).range(1..=100))]
    mailbox_sender_share: u32,
    /// Where offline messages, block lists, login history and lockouts are kept.
    #[arg(long, default_value = "natter-data")]
    data_dir: PathBuf,
    /// TLS certificate chain (PEM; re-read on SIGHUP). Without it natterd makes a
    /// self-signed one in the data directory.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept plain-text (unencrypted) logins from any address; by default only from
    /// loopback, everyone else must use TLS.
    #[arg(long)]
    allow_plaintext: bool,
    /// Treat this loopback address as remote for the plain-text rule (for testing on a
    /// single machine). May be repeated.
    #[arg(long, value_name = "IP")]
    treat_as_remote: Vec<IpAddr>,
    /// Keep everything in memory only (a restart forgets it all).
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// When the journal is forced to disk: `always` (before a message counts as
    /// stored), `everysec` (may lose the last second on power loss), `no` (the kernel decides).
    #[arg(long, default_value = "always")]
    fsync: FsyncPolicy,
    /// The journal is rewritten from the live data once it doubles, but not below this size.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    compact_min: usize,
    /// What three wrong passwords lock: `account` (the username, from anywhere) or
    /// `account+ip` (the username from that address only).
    #[arg(long, default_value = "account", value_parser = parse_scope)]
    lockout_scope: LockoutScope,
    /// Commands a client may send in a burst before its input is paused (0: no limit).
    #[arg(long, default_value_t = 40)]
    flood_burst: u32,
    /// Commands per second a client may sustain after its burst.
    #[arg(long, default_value_t = 10.0)]
    flood_rate: f64,
    /// Open connections from one address (0: no limit).
    #[arg(long, default_value_t = 32)]
    max_per_ip: u32,
    /// New connections from one address per minute (0: no limit).
    #[arg(long, default_value_t = 60)]
    max_new_per_ip: u32,
    /// Apply the per-address and flood limits to loopback clients too (exempt by default).
    #[arg(long)]
    limit_loopback: bool,
    /// Threads that verify password hashes (off the event loop).
    #[arg(long, default_value_t = 1)]
    verify_threads: usize,
    /// Log the counters this often with -v (e.g. `60s`; 0: only on SIGUSR1).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    stats_interval: Duration,
    /// Join a cluster of natterd nodes through NATS JetStream: one or more broker
    /// URLs, `nats://[user:pass@]HOST:PORT`, comma-separated (tried in turn). State
    /// lives in the broker's stream instead of the local journal.
    #[arg(long, value_name = "URLS", requires = "node")]
    cluster: Option<String>,
    /// This node's name in the cluster (unique; letters, digits, `-`, `_`).
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node: Option<String>,
    /// Replication factor of the stream when this node creates it (3 on a three-server
    /// NATS cluster; an existing stream is used as it is).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_replicas: u8,
    /// Name of the JetStream stream (several clusters may share one broker).
    #[arg(long, default_value = "NATTER")]
    cluster_stream: String,
    /// More logging: -v logins and limits, -vv connections (default: warnings only, or RUST_LOG).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_scope(s: &str) -> Result<LockoutScope, String> {
    match s {
        "account" => Ok(LockoutScope::Account),
        "account+ip" => Ok(LockoutScope::AccountIp),
        _ => Err(format!("`{s}` is not `account` or `account+ip`")),
    }
}

/// `natterd hash-password`: reads a password (twice, unechoed, on a terminal; one line
/// otherwise) and prints its argon2id hash.
fn hash_password() -> ExitCode {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let read_line = |prompt: &str| -> std::io::Result<String> {
        let tty = stdin.is_terminal();
        let _quiet = if tty {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
            natter::client::terminal::NoEcho::new()
        } else {
            None
        };
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        if tty {
            eprintln!();
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let result = (|| -> Result<String, String> {
        let pw = read_line("Password: ").map_err(|e| e.to_string())?;
        if pw.is_empty() || pw.chars().any(char::is_whitespace) {
            return Err("the password must be non-empty, without white space".into());
        }
        if stdin.is_terminal() && read_line("Again: ").map_err(|e| e.to_string())? != pw {
            return Err("the passwords differ".into());
        }
        natter::server::accounts::hash_password(&pw)
    })();
    match result {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("natterd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `natterd journal check|repair`: what is damaged in a journal, and keeping every
/// intact record of it.
#[derive(Parser, Debug)]
#[command(name = "natterd journal", about = "Check or repair natterd's journal")]
struct JournalArgs {
    /// `check` (report records, damage and what a start would lose) or `repair` (keep
    /// every intact record; the original file is kept as journal.damaged-*).
    #[arg(value_parser = ["check", "repair"])]
    action: String,
    /// The data directory holding the journal.
    #[arg(long, default_value = "natter-data")]
    data_dir: PathBuf,
}

fn journal_command() -> ExitCode {
    use natter::server::store;
    let args = match JournalArgs::try_parse_from(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let path = store::journal_path(&args.data_dir);
    let describe = |r: &store::Report| {
        for d in &r.spans {
            println!(
                "damage at byte {}: {} ({} bytes)",
                d.offset, d.reason, d.len
            );
        }
        println!(
            "intact records: {} before the first damage, {} after it ({} of them messages)",
            r.records_before, r.records_after, r.messages_after
        );
    };
    if args.action == "check" {
        let report = match store::read_journal(&path).map(|b| store::check(&b)) {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                eprintln!("natterd: {}: not a natter journal", path.display());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("natterd: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", path.display());
        describe(&report);
        if report.spans.is_empty() {
            println!("no damage");
            return ExitCode::SUCCESS;
        }
        if report.only_torn_tail() {
            println!(
                "a torn tail only (a write cut short): natterd recovers it by itself, losing nothing acknowledged"
            );
        } else {
            println!(
                "natterd refuses to start on this journal: starting would lose the {} intact records after the damage; `natterd journal repair --data-dir {}` keeps them",
                report.records_after,
                args.data_dir.display()
            );
        }
        return ExitCode::FAILURE;
    }
    match store::repair(&args.data_dir) {
        Ok((report, aside)) => {
            describe(&report);
            let skipped: usize = report.spans.iter().map(|d| d.len).sum();
            println!(
                "repaired: kept {} intact records, skipped {skipped} damaged bytes in {} places; the original is kept as {}",
                report.records_before + report.records_after,
                report.spans.len(),
                aside.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("natterd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("hash-password") => return hash_password(),
        Some("journal") => return journal_command(),
        _ => {}
    }
    let args: Args = match natter::cli::parse_args("natterd") {
        Ok(a) => a,
        Err(code) => return code,
    };
    natter::logging::init("natterd", args.verbose);
    // A journal that reaches the file-size limit (RLIMIT_FSIZE) must fail its write
    // with EFBIG, like a full disk fails with ENOSPC, not kill the server: SIGXFSZ's
    // default action is to terminate. A handler (that does nothing) turns it off.
    if let Err(e) = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        log::warn!("cannot handle SIGXFSZ: {e}");
    }
    if args.max_line == 0 || args.max_queued < args.max_line || args.ack_window == 0 {
        eprintln!(
            "natterd: error: --max-line must be positive, --max-queued at least --max-line, --ack-window positive"
        );
        return ExitCode::from(2);
    }

    let cluster = match (&args.cluster, &args.node) {
        (Some(urls), Some(node)) => {
            let urls = match server::cluster::parse_urls(urls) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("natterd: error: --cluster: {e}");
                    return ExitCode::from(2);
                }
            };
            if !server::cluster::valid_node_name(node) {
                eprintln!("natterd: error: --node: use letters, digits, `-` and `_` (at most 64)");
                return ExitCode::from(2);
            }
            if !server::cluster::valid_node_name(&args.cluster_stream) {
                eprintln!("natterd: error: --cluster-stream: use letters, digits, `-` and `_`");
                return ExitCode::from(2);
            }
            if args.lockout_scope != LockoutScope::Account {
                eprintln!("natterd: error: a cluster counts lockouts per account only");
                return ExitCode::from(2);
            }
            Some(server::cluster::ClusterConfig {
                urls,
                node: node.clone(),
                replicas: args.cluster_replicas,
                stream: args.cluster_stream.clone(),
            })
        }
        _ => None,
    };

    // Every connection is a file descriptor: take all the kernel allows us.
    let fd_limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let max_connections = args
        .max_connections
        .unwrap_or_else(|| (fd_limit.saturating_sub(64)).max(16) as usize);

    let credentials = match server::accounts::load(&args.credentials) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("natterd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ if args.in_memory => CertSource::Ephemeral,
        _ => CertSource::Generated {
            dir: args.data_dir.clone(),
        },
    };
    if let CertSource::Generated { dir } = &tls
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("natterd: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let cfg = Config {
        cluster,
        tls,
        allow_plaintext: args.allow_plaintext,
        treat_as_remote: args.treat_as_remote.clone(),
        addr: SocketAddr::new(args.bind, args.port),
        max_connections,
        on_idle: Some(release_memory),
        credentials_path: Some(args.credentials.clone()),
        limits: Limits {
            max_per_ip: args.max_per_ip,
            new_per_ip_per_min: args.max_new_per_ip,
            limit_loopback: args.limit_loopback,
        },
        verify_threads: args.verify_threads.max(1),
        stats_interval: (!args.stats_interval.is_zero()).then_some(args.stats_interval),
        store: StoreConfig {
            dir: (!args.in_memory).then_some(args.data_dir),
            fsync: args.fsync,
            compact_min: args.compact_min as u64,
        },
        core: CoreConfig {
            block_duration: args.block_duration,
            timeout: args.timeout,
            login_timeout: args.login_timeout,
            ping_interval: args.ping_interval,
            ping_timeout: args.ping_timeout,
            max_line: args.max_line,
            max_queued: args.max_queued,
            ack_window: args.ack_window,
            mailbox_max_messages: args.mailbox_max_messages,
            mailbox_max_bytes: args.mailbox_max_bytes,
            mailbox_sender_share: args.mailbox_sender_share,
            lockout_scope: args.lockout_scope,
            flood_burst: args.flood_burst,
            flood_rate: args.flood_rate.max(0.001),
            limit_loopback: args.limit_loopback,
        },
    };
    let accounts = credentials.len();
    let result = server::run(cfg, credentials, |addr, fingerprint| {
        println!("natterd listening on {addr}");
        // Next to the listening line, on stderr (stdout's line is the contract's):
        // what TLS clients will be shown, for them to check or pin.
        eprintln!("natterd: TLS certificate fingerprint {fingerprint}");
        log::info!("{accounts} accounts, up to {max_connections} connections");
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natterd: {e}");
            ExitCode::FAILURE
        }
    }
}
