//! `natter [SERVER_IP] [SERVER_PORT] [options]`: the natter terminal client.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use natter::client::{self, ClientConfig};

/// The natter terminal client.
#[derive(Parser, Debug)]
#[command(
    name = "natter",
    version,
    about,
    after_help = "The password may also come from the NATTER_PASSWORD environment variable."
)]
struct Args {
    /// Server address.
    #[arg(default_value = "127.0.0.1")]
    server_ip: IpAddr,
    /// Server port.
    #[arg(default_value_t = 4000)]
    server_port: u16,
    /// Log in as this user (skips the username prompt).
    #[arg(long)]
    user: Option<String>,
    /// Print no prompts (`Username: `, `Password: `, `> `): output lines only, for scripts.
    #[arg(long, short)]
    quiet: bool,
    /// How long connecting and the server's handshake may take (seconds or a span: `10s`).
    #[arg(long, default_value = "10s", value_parser = natter::units::parse_duration)]
    connect_timeout: std::time::Duration,
    /// Speak plain text to the server instead of TLS (an old server, a loopback test).
    #[arg(long)]
    plaintext: bool,
    /// Trust only the server certificate with this SHA-256 fingerprint
    /// (`SHA256:ab:cd:...`, as natterd prints it).
    #[arg(long, value_name = "FINGERPRINT", conflicts_with = "plaintext")]
    trust_fingerprint: Option<String>,
}

fn main() -> ExitCode {
    let args: Args = match natter::cli::parse_args("natter") {
        Ok(a) => a,
        Err(code) => return code,
    };
    natter::logging::init("natter", 0);
    let cfg = ClientConfig {
        server: SocketAddr::new(args.server_ip, args.server_port),
        user: args.user,
        password: std::env::var("NATTER_PASSWORD").ok(),
        quiet: args.quiet,
        connect_timeout: args.connect_timeout,
        plaintext: args.plaintext,
        trust_fingerprint: args.trust_fingerprint,
    };
    match client::run(cfg) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("natter: {e}");
            ExitCode::FAILURE
        }
    }
}
