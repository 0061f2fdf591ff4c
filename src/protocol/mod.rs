//! The natter wire protocol: newline-delimited UTF-8 frames, with no I/O.
//!
//! [`codec`] frames a byte stream into bounded lines and queues output;
//! [`frames`] gives those lines types; [`peer`] is the client-to-client protocol. Both are pure and unit-tested here; the server,
//! the client and the peer-to-peer link all share them.

pub mod codec;
pub mod frames;
pub mod peer;

pub use codec::{Flow, Frame, LineDecoder, OutBuf};
pub use frames::*;
