//! Cluster mode's settings: the broker URLs (`--cluster`) and the node's name.

/// One broker address, from `nats://[user:pass@|token@]host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `host:port`.
    pub addr: String,
    /// User and password, if given.
    pub user: Option<(String, String)>,
    /// Token, if given.
    pub token: Option<String>,
}

/// Parses `--cluster`: one or more `nats://` URLs separated by commas.
pub fn parse_urls(s: &str) -> Result<Vec<BrokerUrl>, String> {
    let mut urls = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let rest = part
            .strip_prefix("nats://")
            .ok_or_else(|| format!("{part}: a broker URL starts with nats://"))?;
        let (auth, host) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let host = host.trim_end_matches('/');
        let addr = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:4222")
        };
        if addr.starts_with(':') {
            return Err(format!("{part}: no host"));
        }
        let (user, token) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some((u.to_string(), p.to_string())), None),
                None => (None, Some(a.to_string())),
            },
        };
        urls.push(BrokerUrl { addr, user, token });
    }
    if urls.is_empty() {
        return Err("no broker URL given".into());
    }
    Ok(urls)
}

/// What cluster mode needs to run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The brokers to try, in turn.
    pub urls: Vec<BrokerUrl>,
    /// This node's name (unique in the cluster; letters, digits, `-`, `_`).
    pub node: String,
    /// The stream's replication factor when this node creates it.
    pub replicas: u8,
    /// The stream's name.
    pub stream: String,
}

/// Whether a node name can be used as a subject token.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_defaults_and_credentials() {
        let u =
            parse_urls("nats://127.0.0.1:4222, nats://bob:pw@h2:5000,nats://tok@h3").expect("urls");
        assert_eq!(u[0].addr, "127.0.0.1:4222");
        assert_eq!(u[1].user, Some(("bob".into(), "pw".into())));
        assert_eq!(u[1].addr, "h2:5000");
        assert_eq!(u[2].token.as_deref(), Some("tok"));
        assert_eq!(u[2].addr, "h3:4222");
        assert!(parse_urls("http://x").is_err());
        assert!(parse_urls("").is_err());
    }
}
