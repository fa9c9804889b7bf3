//! A TOML reader error told as a person needs it: where (line, column, org,
//! table path and key), what, and the fix; never the value, which may be a
//! secret (`api_token = 9876...` is reported as "found integer").

/// Where in the file, and what the reader said (without the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlProblem {
    pub line: usize,
    pub column: usize,
    /// `orgs.acme.zendesk.api_token`, or the table alone when no key is at fault.
    pub path: String,
    /// The org the path is in, when it is in one.
    pub org: Option<String>,
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for TomlProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)?;
        if let Some(org) = &self.org {
            write!(f, ", org `{org}`")?;
        }
        if !self.path.is_empty() {
            write!(f, ", `{}`", self.path)?;
        }
        write!(
            f,
            ": {}. Fix: {} (the value is not shown here: it may be a secret)",
            self.what, self.fix
        )
    }
}

pub fn describe(text: &str, error: &toml::de::Error) -> TomlProblem {
    let start = error.span().map_or(0, |s| s.start).min(text.len());
    let (line, column) = line_and_column(text, start);
    let path = path_at(text, start);
    let org = org_of(&path);
    let (what, fix) = what_and_fix(error.message());
    TomlProblem {
        line,
        column,
        path,
        org,
        what,
        fix,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The table header in force at `offset`, plus the key of its line (a bare
/// key only: anything else on the line may be part of a value).
fn path_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut consumed = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            table = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        } else if offset < consumed + line.len() {
            let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
            let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ');
            if !key.is_empty() && key.chars().all(bare) {
                return if table.is_empty() {
                    key.to_string()
                } else {
                    format!("{table}.{key}")
                };
            }
        }
        consumed += line.len();
        if offset < consumed {
            break;
        }
    }
    table
}

fn org_of(path: &str) -> Option<String> {
    let mut parts = path.split('.').map(|p| p.trim().trim_matches(['"', '\'']));
    match (parts.next(), parts.next()) {
        (Some("orgs"), Some(org)) if !org.is_empty() => Some(org.to_string()),
        _ => None,
    }
}

/// The reader's message without the value it quotes, and the fix.
fn what_and_fix(message: &str) -> (String, String) {
    let message = message.lines().next().unwrap_or("").trim();
    let expected = message
        .split_once(", expected ")
        .map(|(_, e)| e.trim().to_string());
    let exp = expected.clone().unwrap_or_default();
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        // `integer `9876``, `string "abc"`, `sequence`: keep the kind only.
        let found = rest
            .split(['`', '"', ','])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let fix = if exp.contains("string") {
            "write the value in double quotes, or as a \"${ENV_VAR}\" reference for a secret"
                .to_string()
        } else if exp.contains("sequence") {
            "write a list, e.g. [\"a\", \"b\"]".to_string()
        } else if exp.starts_with('u') || exp.starts_with('i') || exp.contains("integer") {
            "write a whole number without quotes".to_string()
        } else if exp.contains("bool") {
            "write true or false, without quotes".to_string()
        } else {
            format!("give a value of type {exp}")
        };
        return (format!("wrong type: found {found}, expected {exp}"), fix);
    }
    if message.starts_with("unknown variant") {
        return (
            format!("unknown value, expected {exp}"),
            format!("use {exp}"),
        );
    }
    if message.starts_with("invalid value") || message.starts_with("invalid length") {
        let what = message
            .split([':', ' '])
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        return (format!("{what}, expected {exp}"), format!("give {exp}"));
    }
    if message.starts_with("unknown field") {
        return (
            message.to_string(),
            "remove it or fix its spelling (deploy/config/escalator.example.toml lists every field)"
                .to_string(),
        );
    }
    if message.starts_with("missing field") {
        return (message.to_string(), "add it to the table".to_string());
    }
    if message.starts_with("duplicate") {
        return (message.to_string(), "keep only one of them".to_string());
    }
    // A syntax error: the reader names what it expected, not what it found;
    // anything quoted before "expected" is dropped all the same.
    let what = match message.split_once(", expected ") {
        Some((head, _)) if head.contains(['`', '"', '\'']) => "invalid TOML".to_string(),
        Some(_) | None if message.contains(['`', '"', '\'']) && expected.is_none() => {
            "invalid TOML".to_string()
        }
        _ => message.to_string(),
    };
    (
        what,
        "fix the TOML syntax there (strings in double quotes, one key = value per line)"
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> TomlProblem {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Probe {
            orgs: std::collections::BTreeMap<String, crate::config::OrgConfig>,
        }
        let e = toml::from_str::<Probe>(text).unwrap_err();
        describe(text, &e)
    }

    const HEAD: &str = "[orgs.acme]\nprovider = \"zendesk\"\n[orgs.acme.zendesk]\nsubdomain = \"acme\"\nemail = \"bot@acme.example\"\n";

    #[test]
    fn a_value_of_the_wrong_type_is_located_but_not_echoed() {
        for (line, found) in [
            ("api_token = 98765431234", "integer"),
            ("group_id = \"CANARY-77\"", "string"),
            ("tags = \"CANARY-77\"", "string"),
            ("api_token = [\"CANARY-77\"]", "sequence"),
        ] {
            let p = problem(&format!("{HEAD}{line}\n"));
            let text = p.to_string();
            assert!(
                !text.contains("9876543") && !text.contains("CANARY"),
                "{text}"
            );
            assert_eq!(
                (p.line, p.column),
                (6, line.find('=').unwrap() + 3),
                "{text}"
            );
            assert_eq!(p.org.as_deref(), Some("acme"), "{text}");
            let key = line.split(' ').next().unwrap();
            assert_eq!(p.path, format!("orgs.acme.zendesk.{key}"), "{text}");
            assert!(text.contains(&format!("found {found}")), "{text}");
            assert!(text.contains("Fix: "), "{text}");
        }
    }

    #[test]
    fn unknown_variants_and_syntax_errors_do_not_echo_the_value() {
        let p = problem("[orgs.globex]\nprovider = \"CANARY-77\"\n");
        let text = p.to_string();
        assert!(!text.contains("CANARY"), "{text}");
        assert_eq!(p.path, "orgs.globex.provider");
        assert!(text.contains("`zendesk` or `salesforce`"), "{text}");
        for bad in [
            "api_token = CANARY-77",
            "api_token = \"CANARY-77\" junk",
            "api_token = 'CANARY-77",
            "api_token = 2026-13-45TCANARY",
        ] {
            let text = problem(&format!("{HEAD}{bad}\n")).to_string();
            assert!(!text.contains("CANARY"), "{bad}: {text}");
            assert!(text.contains("line 6"), "{bad}: {text}");
        }
    }

    #[test]
    fn missing_and_unknown_fields_name_the_table() {
        let p = problem("[orgs.acme]\nprovider = \"zendesk\"\nwhat = 1\n");
        assert_eq!(p.path, "orgs.acme.what", "{p}");
        assert!(p.to_string().contains("unknown field `what`"), "{p}");
    }
}
