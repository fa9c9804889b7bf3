//! Several RabbitMQ nodes of one cluster behind one `ESCALATOR_AMQP_URL`:
//! `amqp://USER:PASSWORD@node-a:5672,node-b:5672,node-c:5672/VHOST` (the
//! credentials, vhost and query apply to every node; `amqps://` alike).
//! A connection tries the nodes in turn, starting at a different one in
//! each process so that a fleet spreads over the cluster; losing the node a
//! worker is connected to is then a reconnect to the next, not an outage.
use std::sync::atomic::{AtomicUsize, Ordering};

/// One URL per node, in the order written (one URL when it names one host).
pub fn expand(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // Hosts follow the last '@' (a password may hold ',' or '@').
    let (auth, hosts) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let hosts: Vec<&str> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.len() < 2 {
        return vec![url.to_string()];
    }
    hosts
        .into_iter()
        .map(|h| format!("{scheme}://{auth}{h}{tail}"))
        .collect()
}

/// Where this process starts in the list; moves on after each failure.
static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The nodes in the order to try them now: from this process's current
/// node, then the others.
pub fn in_turn(url: &str) -> Vec<String> {
    let nodes = expand(url);
    if nodes.len() < 2 {
        return nodes;
    }
    let start = match NEXT.load(Ordering::Relaxed) {
        usize::MAX => {
            let first = std::process::id() as usize % nodes.len();
            NEXT.store(first, Ordering::Relaxed);
            first
        }
        n => n % nodes.len(),
    };
    let mut ordered = nodes[start..].to_vec();
    ordered.extend_from_slice(&nodes[..start]);
    ordered
}

/// Node `index` of [`in_turn`]'s last list failed: start at the next one.
pub fn failed(url: &str, index: usize) {
    let n = expand(url).len();
    if n > 1 {
        let current = NEXT.load(Ordering::Relaxed);
        let base = if current == usize::MAX { 0 } else { current };
        NEXT.store((base + index + 1) % n, Ordering::Relaxed);
    }
}

/// Try each node in turn with `connect`; the first connection, else the
/// last error.
pub async fn connect_any<T, E, F, Fut>(url: &str, mut connect: F) -> Result<T, E>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let nodes = in_turn(url);
    let count = nodes.len();
    let mut i = 0;
    loop {
        let node = nodes.get(i).cloned().unwrap_or_else(|| url.to_string());
        match connect(node).await {
            Ok(c) => {
                if i > 0 {
                    failed(url, i - 1);
                    tracing::info!(
                        node = i,
                        nodes = count,
                        "connected to another RabbitMQ node of the list"
                    );
                }
                return Ok(c);
            }
            Err(e) if i + 1 >= count => return Err(e),
            Err(_) => {
                tracing::warn!(
                    node = i,
                    nodes = count,
                    "cannot connect to a RabbitMQ node of the list: trying the next"
                );
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_becomes_one_url_per_node_with_the_same_credentials_and_vhost() {
        assert_eq!(
            expand("amqp://u:p,@ss@a:5672, b:5673 ,c/%2f?heartbeat=10"),
            [
                "amqp://u:p,@ss@a:5672/%2f?heartbeat=10",
                "amqp://u:p,@ss@b:5673/%2f?heartbeat=10",
                "amqp://u:p,@ss@c/%2f?heartbeat=10",
            ]
        );
        assert_eq!(expand("amqps://h:5671"), ["amqps://h:5671"]);
        assert_eq!(expand("not a url"), ["not a url"]);
    }

    #[tokio::test]
    async fn connecting_tries_each_node_and_starts_at_the_last_good_one() {
        let url = "amqp://g:g@a:1,b:2,c:3/v";
        let tried = std::sync::Mutex::new(Vec::new());
        let got: Result<String, ()> = connect_any(url, |u| {
            tried.lock().unwrap().push(u.clone());
            async move { if u.contains("@b:") { Ok(u) } else { Err(()) } }
        })
        .await;
        assert_eq!(got.as_deref(), Ok("amqp://g:g@b:2/v"));
        assert!(tried.lock().unwrap().len() <= 3);
        // The next connection starts at b.
        assert_eq!(in_turn(url)[0], "amqp://g:g@b:2/v");
        let none: Result<(), &str> = connect_any(url, |_| async { Err("down") }).await;
        assert_eq!(none, Err("down"));
    }
}
