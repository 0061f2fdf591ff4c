//! `natter`: the terminal client.
//!
//! - [`app`]: the client's mio loop (stdin, server link, signals, peer connections);
//! - [`command`]: parsing what the user typed;
//! - [`render`]: every string the user sees;
//! - [`editor`]: the line editor used on a terminal;
//! - [`terminal`]: terminal modes, restored on every exit path.

pub mod app;
pub mod command;
pub mod editor;
pub mod render;
pub mod terminal;

pub use app::{ClientConfig, ClientError, run};
