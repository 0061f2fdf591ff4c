//! natter: a small instant-messaging server (`natterd`) and terminal client (`natter`).
//!
//! The crate is laid out the way data flows:
//! - [`protocol`]: the wire format, pure functions over bytes (no I/O);
//! - [`server`]: the single-threaded mio event loop, the chat state it drives and the
//!   timer wheel behind every deadline;
//! - [`client`]: the terminal client's own mio loop, its line editor and renderer;
//! - [`loadgen`]: `natter-bench`, the load generator (its own mio loops, one per thread);
//! - [`units`]: parsing of the durations and sizes that both command lines accept.
//!
//! The binaries in `src/bin/` only turn command-line flags into a checked config and
//! call into this library.
#![warn(unreachable_pub, missing_docs)]

pub mod cli;
pub mod client;
pub mod loadgen;
pub mod logging;
pub(crate) mod net;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod units;
