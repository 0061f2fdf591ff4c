//! `natterd`: the server.
//!
//! - [`event_loop`]: one thread, one `mio::Poll`; owns every socket (a table of
//!   connections keyed like the core's sessions), the listener, the journal writer and
//!   the verifier threads;
//! - [`core`]: the chat rules, fed bytes and time, socket-free, split by concern;
//! - [`store`]: the journal that makes mailboxes, blocks, history and lockouts durable;
//! - `mailbox`: one user's offline messages and their caps;
//! - [`tls`]: the certificate natterd presents (given or self-signed);
//! - [`timer`]: the hashed timer wheel behind every deadline;
//! - [`accounts`]: loading `credentials.txt`, password hashes;
//! - [`memory`]: giving back the code pages an idle server does not need;
//! - `clock`: compact points in time (milliseconds) for per-connection state;
//! - `flood`: the token bucket behind every rate limit;
//! - `verify_queue`: the bounded, fair queue of logins waiting for a verifier;
//! - `verifier`: the threads that check password hashes off the loop.

pub mod accounts;
pub(crate) mod clock;
pub mod cluster;
pub mod core;
pub mod event_loop;
pub(crate) mod flood;
mod mailbox;
pub mod memory;
pub mod store;
pub mod timer;
pub mod tls;
pub(crate) mod verifier;
mod verify_queue;

pub use self::core::{Core, CoreConfig, LockoutScope};
pub use event_loop::{Config, RunError, run};
