//! Cluster mode's broker connection: NATS with JetStream, one more socket on the loop.

pub mod record;
