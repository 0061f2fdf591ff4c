//! Counters for operators and benchmarks, and the one-line summary SIGUSR1 prints.

/// The core's counters (the loop counts its own admission refusals).
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub accepted: u64,
    pub closed: u64,
    pub logins: u64,
    pub failed_logins: u64,
    pub lockouts: u64,
    pub direct_delivered: u64,
    pub stored: u64,
    pub broadcast_deliveries: u64,
    pub mailbox_full: u64,
    pub too_long: u64,
    pub slow_reader_kills: u64,
    pub dead_peer_kills: u64,
    pub login_timeouts: u64,
    pub idle_logouts: u64,
    pub store_refused: u64,
    pub flood_throttled: u64,
    pub hash_verifications: u64,
    /// Logins refused because the verification queue was full.
    pub verify_refused: u64,
    pub reloads: u64,
}

/// The stats line: connections, users, traffic, queues and limit hits.
pub(super) fn line(
    st: &Stats,
    connections: usize,
    online: usize,
    queued: usize,
    verify_queued: usize,
) -> String {
    format!(
        "stats: connections={connections} online={online} accepted={} logins={} failed_logins={} lockouts={} \
         direct={} stored={} broadcast_deliveries={} queued_bytes={queued} mailbox_full={} \
         too_long={} slow_reader_kills={} dead_peer_kills={} login_timeouts={} \
         idle_logouts={} flood_throttled={} \
         store_refused={} hash_verifications={} verify_refused={} verify_queued={verify_queued} reloads={}",
        st.accepted,
        st.logins,
        st.failed_logins,
        st.lockouts,
        st.direct_delivered,
        st.stored,
        st.broadcast_deliveries,
        st.mailbox_full,
        st.too_long,
        st.slow_reader_kills,
        st.dead_peer_kills,
        st.login_timeouts,
        st.idle_logouts,
        st.flood_throttled,
        st.store_refused,
        st.hash_verifications,
        st.verify_refused,
        st.reloads,
    )
}
