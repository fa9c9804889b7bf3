//! A configuration value that must never be printed.
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// A secret from the config file, either literal or a `${ENV_VAR}` reference
/// that [`Secret::resolve`] replaces with the variable's value.
///
/// `Debug` and `Display` print `<redacted>`; only [`Secret::expose`] gives the
/// value, at the one place that sends it to a provider.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Replace a whole-value `${NAME}` reference by the environment variable
    /// `NAME`. Errors name the variable, never the value.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
        let raw = self.expose().trim();
        let Some(name) = raw.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
            return Ok(self.clone());
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`{raw}` is not a valid environment reference: use ${{NAME}} with letters, digits and _"
            ));
        }
        match env(name) {
            Some(v) if !v.is_empty() => Ok(Secret::new(v)),
            Some(_) => Err(format!("environment variable {name} is empty: set it")),
            None => Err(format!("environment variable {name} is not set: export it")),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.expose().trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn resolves_env_references() {
        let env = |name: &str| (name == "TOKEN").then(|| "abc".to_string());
        assert_eq!(
            Secret::new("${TOKEN}").resolve(&env).unwrap().expose(),
            "abc"
        );
        assert_eq!(
            Secret::new("literal").resolve(&env).unwrap().expose(),
            "literal"
        );
        let err = Secret::new("${MISSING}").resolve(&env).unwrap_err();
        assert!(err.contains("MISSING is not set"), "{err}");
        assert!(Secret::new("${bad name}").resolve(&env).is_err());
    }
}
