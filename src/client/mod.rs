//! `natter`: the terminal client.
//!
//! - `app`: the client's mio loop (stdin, server link, signals, peer connections),
//!   moving bytes and time between the parts below;
//! - `conversation`: the dialogue with the server as a sans-IO state machine (typed
//!   lines and server lines in, requests and effects out), unit-tested on its own;
//! - `peers`: the peer table (private sessions and their set-up, bounded against
//!   strangers);
//! - `screen`: what is written to stdout (escaped), prompts, the redrawn input line;
//! - `link`: a line-framed TCP connection with a read budget;
//! - `command`: parsing what the user typed;
//! - `render`: every string the user sees, and `visible` (network text made safe);
//! - `editor`: the line editor used on a terminal;
//! - `trust`: TLS to natterd: system roots, trust on first use, pinned fingerprints;
//! - [`terminal`]: terminal modes, restored on every exit path.

mod app;
mod command;
mod conversation;
mod editor;
mod link;
mod peer_tls;
mod peers;
mod render;
mod screen;
pub mod terminal;
mod trust;

pub use app::{ClientConfig, ClientError, run};
