//! Rendering of the conversation transcript for tickets and cases.
use crate::contract::{EscalationRequested, FallbackReason};

/// Escape text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The ticket subject: the event's subject, else the summary's first line,
/// else a generic one; at most `max` characters.
pub fn subject(e: &EscalationRequested, max: usize) -> String {
    let raw = e
        .subject
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| {
            e.summary
                .as_deref()
                .and_then(|s| s.lines().map(str::trim).find(|l| !l.is_empty()))
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("Chat escalation {}", e.conversation_id));
    truncate_chars(&raw, max)
}

pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The transcript as HTML: summary, context, then each entry with speaker,
/// time and text (escaped, line breaks kept).
pub fn html(e: &EscalationRequested, fallback_reason: Option<FallbackReason>) -> String {
    let mut out = String::new();
    out.push_str("<p><strong>Escalated from the AI assistant.</strong></p>");
    if let Some(reason) = fallback_reason {
        out.push_str(&format!(
            "<p><em>{}</em></p>",
            escape_html(reason.sentence())
        ));
    }
    if let Some(summary) = e.summary.as_deref().filter(|s| !s.trim().is_empty()) {
        out.push_str(&format!(
            "<p><strong>Summary:</strong> {}</p>",
            multiline(summary)
        ));
    }
    if !e.context.is_empty() {
        out.push_str("<p><strong>Context</strong></p><ul>");
        for (k, v) in &e.context {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("<li>{}: {}</li>", escape_html(k), escape_html(&v)));
        }
        out.push_str("</ul>");
    }
    out.push_str("<p><strong>Transcript</strong></p>");
    if e.transcript.is_empty() {
        out.push_str("<p>(empty)</p>");
    }
    for entry in &e.transcript {
        out.push_str(&format!(
            "<p><strong>{}</strong> <small>{}</small><br>{}</p>",
            escape_html(entry.role.label()),
            entry.sent_at.format("%Y-%m-%d %H:%M:%S UTC"),
            multiline(&entry.text)
        ));
    }
    out
}

/// The transcript as plain text, one block per entry.
pub fn plain(e: &EscalationRequested, fallback_reason: Option<FallbackReason>) -> String {
    let mut out = String::from("Escalated from the AI assistant.\n");
    if let Some(reason) = fallback_reason {
        out.push_str(reason.sentence());
        out.push('\n');
    }
    if let Some(summary) = e.summary.as_deref().filter(|s| !s.trim().is_empty()) {
        out.push_str(&format!("\nSummary: {summary}\n"));
    }
    if !e.context.is_empty() {
        out.push_str("\nContext:\n");
        for (k, v) in &e.context {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("- {k}: {v}\n"));
        }
    }
    out.push_str("\nTranscript:\n");
    for entry in &e.transcript {
        out.push_str(&format!(
            "\n[{}] {}:\n{}\n",
            entry.sent_at.format("%Y-%m-%d %H:%M:%S UTC"),
            entry.role.label(),
            entry.text
        ));
    }
    out
}

fn multiline(s: &str) -> String {
    escape_html(s).replace("\r\n", "\n").replace('\n', "<br>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 3), "hé…");
        assert_eq!(truncate_chars("abc", 3), "abc");
    }
}
