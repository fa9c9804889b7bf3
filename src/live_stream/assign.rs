//! Which live worker should stream a conversation: rendezvous (highest
//! random weight) hashing over the live owners. Every worker computes the
//! same answer from the same owner set, a new worker takes about 1/n of the
//! conversations, and a leaving one's conversations spread over the rest.
use sha2::{Digest, Sha256};

/// The preferred owner of `field` among `live` (none when `live` is empty).
pub fn preferred<'a>(live: &'a [String], field: &str) -> Option<&'a str> {
    live.iter()
        .max_by_key(|w| weight(w, field))
        .map(String::as_str)
}

fn weight(worker: &str, field: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(worker.as_bytes())
        .chain_update([0u8])
        .chain_update(field.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    #[test]
    fn conversations_spread_over_the_workers_and_move_little_when_one_joins() {
        let three = workers(3);
        let fields: Vec<String> = (0..3000).map(|i| format!("org\tc{i}")).collect();
        let mut counts = [0usize; 3];
        for f in &fields {
            let w = preferred(&three, f).unwrap_or_default();
            counts[three.iter().position(|x| x == w).unwrap_or(0)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        let four = workers(4);
        let moved = fields
            .iter()
            .filter(|f| preferred(&three, f) != preferred(&four, f))
            .count();
        // Only those the new worker takes move (about a quarter).
        assert!(moved > 500 && moved < 1000, "{moved}");
        assert!(
            fields
                .iter()
                .filter(|f| preferred(&three, f) != preferred(&four, f))
                .all(|f| preferred(&four, f) == Some("w3"))
        );
    }

    #[test]
    fn nobody_is_preferred_when_no_worker_is_live() {
        assert_eq!(preferred(&[], "org\tc"), None);
    }
}
