//! Which dead letters a command applies to: ids and filters, all ANDed.
use super::DeadLetter;
use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Exact ids (any of them); empty means any id.
    pub ids: Vec<String>,
    pub org: Option<String>,
    pub conversation: Option<String>,
    pub class: Option<String>,
    pub routing_key: Option<String>,
    /// Dead-lettered at least this long ago.
    pub older_than: Option<Duration>,
    /// Dead-lettered at most this long ago.
    pub newer_than: Option<Duration>,
}

impl Selection {
    /// Whether anything narrows the selection (replay and purge refuse to
    /// act on everything unless told `--all`).
    pub fn is_narrowed(&self) -> bool {
        !self.ids.is_empty()
            || self.org.is_some()
            || self.conversation.is_some()
            || self.class.is_some()
            || self.routing_key.is_some()
            || self.older_than.is_some()
            || self.newer_than.is_some()
    }

    pub fn matches(&self, d: &DeadLetter, now: DateTime<Utc>) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let age = d.age(now);
        (self.ids.is_empty() || self.ids.contains(&d.id))
            && eq(&self.org, &d.org)
            && eq(&self.conversation, &d.conversation)
            && eq(&self.class, &d.error_class)
            && eq(&self.routing_key, &d.routing_key)
            // A dead letter of unknown age matches neither age filter.
            && self.older_than.is_none_or(|o| age.is_some_and(|a| a >= o))
            && self.newer_than.is_none_or(|n| age.is_some_and(|a| a <= n))
    }
}

/// `30s`, `10m`, `2h`, `3d` (a number and one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 10m, 2h or 3d"))?;
    let d = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => None,
    };
    d.ok_or_else(|| format!("`{text}` is not a duration like 30s, 10m, 2h or 3d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::minutes(10)));
        assert_eq!(parse_duration("3d"), Ok(Duration::days(3)));
        assert_eq!(parse_duration("45s"), Ok(Duration::seconds(45)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("h").is_err());
    }
}
