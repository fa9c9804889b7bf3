//! The Sunshine Conversations v2 HTTP client: the few calls a hand-over and
//! a live chat need, and the mapping of its errors to [`ProviderError`]s.
//!
//! Sunshine has no idempotency keys: callers put their own ids in message and
//! conversation `metadata` and look them up with the list calls here before
//! repeating a call whose answer was lost.
use crate::error::{ErrorClass, Landing, ProviderError, ProviderErrorKind};
use crate::provider::http::{classify_status, execute, retry_after, settled_for, transport_error};
use base64::Engine;
use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::Value;

pub(crate) const PROVIDER: &str = "zendesk";
/// Sunshine's limit on a text message (characters).
pub const TEXT_MAX: usize = 4096;
/// Pages read at most when scanning a list (100 records a page).
pub const MAX_PAGES: usize = 50;

/// Basic `key_id:secret` for one Sunshine app.
pub struct SunshineClient {
    http: reqwest::Client,
    /// `{base}/v2/apps/{appId}`.
    app_url: String,
    auth: HeaderValue,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub id: String,
}

#[derive(Deserialize)]
struct UserEnvelope {
    user: User,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchboardIntegration {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub integration_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: String,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub active_switchboard_integration: Option<SwitchboardIntegration>,
}

impl Conversation {
    /// A metadata value as a string, if present.
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key)?.as_str()
    }
}

#[derive(Deserialize)]
struct ConversationEnvelope {
    conversation: Conversation,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub after_cursor: Option<String>,
    #[serde(default)]
    pub before_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ConversationList {
    #[serde(default)]
    conversations: Vec<Conversation>,
    #[serde(default)]
    meta: Meta,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub id: String,
    #[serde(default)]
    pub received: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

impl Message {
    /// Our id in the message's metadata.
    pub fn escalator_id(&self) -> Option<&str> {
        self.metadata.as_ref()?.get(MESSAGE_ID_KEY)?.as_str()
    }
}

/// The metadata key that carries our id of a message.
pub const MESSAGE_ID_KEY: &str = "escalator_message_id";

#[derive(Deserialize)]
struct MessagesEnvelope {
    #[serde(default)]
    messages: Vec<Message>,
}

/// One page of a conversation's messages (oldest first within the page).
#[derive(Debug, Deserialize)]
pub struct MessagePage {
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default)]
    pub meta: Meta,
}

fn basic_auth(key_id: &str, secret: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{key_id}:{secret}"));
    // Base64 is always a valid header value; the fallback only satisfies the type.
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// A path segment, percent-encoded (external ids are ours but may hold anything).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl SunshineClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        app_id: &str,
        key_id: &str,
        secret: &str,
    ) -> Self {
        SunshineClient {
            http,
            app_url: format!(
                "{}/v2/apps/{}",
                base_url.trim_end_matches('/'),
                segment(app_id)
            ),
            auth: basic_auth(key_id, secret),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app_url)
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        op: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let rb = rb
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        let (resp, method) = execute(&self.http, rb, PROVIDER, op).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(settled_for(&method, error_from_response(resp, op).await))
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        resp: reqwest::Response,
        op: &str,
        safe: bool,
    ) -> Result<T, ProviderError> {
        let bytes = resp.bytes().await.map_err(|e| {
            let e = transport_error(PROVIDER, &e);
            if safe {
                e.with_landing(Landing::NotLanded)
            } else {
                e
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            // The call itself succeeded: an unreadable answer to a write still landed.
            let landing = if safe {
                Landing::NotLanded
            } else {
                Landing::MayHaveLanded
            };
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("{op}: unexpected response shape: {}", e.classify_name()),
            )
            .with_landing(landing)
        })
    }

    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        rb: reqwest::RequestBuilder,
        op: &str,
    ) -> Result<T, ProviderError> {
        let resp = self.send(rb, op).await?;
        Self::json(resp, op, true).await
    }

    /// `GET /v2/apps/{appId}`: whether the key and app id are right (401:
    /// wrong key id or secret; 404: no such app). Used by `escalator doctor`.
    pub async fn get_app(&self) -> Result<(), ProviderError> {
        let _: Value = self.read(self.http.get(&self.app_url), "get app").await?;
        Ok(())
    }

    /// `POST /users`: the new user's id, or `None` when a user with this
    /// external id exists already (409 conflict).
    pub async fn create_user(&self, body: &Value) -> Result<Option<String>, ProviderError> {
        let op = "sunshine create user";
        match self
            .send(self.http.post(self.url("/users")).json(body), op)
            .await
        {
            Ok(resp) => Ok(Some(
                Self::json::<UserEnvelope>(resp, op, false).await?.user.id,
            )),
            Err(e) if e.status == Some(409) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /users/{userIdOrExternalId}`.
    pub async fn get_user(&self, id_or_external_id: &str) -> Result<String, ProviderError> {
        let rb = self
            .http
            .get(self.url(&format!("/users/{}", segment(id_or_external_id))));
        Ok(self
            .read::<UserEnvelope>(rb, "sunshine get user")
            .await?
            .user
            .id)
    }

    /// `POST /conversations`: the new conversation's id.
    pub async fn create_conversation(&self, body: &Value) -> Result<String, ProviderError> {
        let op = "sunshine create conversation";
        let resp = self
            .send(self.http.post(self.url("/conversations")).json(body), op)
            .await?;
        Ok(Self::json::<ConversationEnvelope>(resp, op, false)
            .await?
            .conversation
            .id)
    }

    /// `GET /conversations?filter[userId]=..`, every page (bounded).
    pub async fn list_conversations(
        &self,
        user_id: &str,
    ) -> Result<Vec<Conversation>, ProviderError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("filter[userId]", user_id.to_string())];
            if let Some(a) = &after {
                query.push(("page[after]", a.clone()));
            }
            let rb = self.http.get(self.url("/conversations")).query(&query);
            let page: ConversationList = self.read(rb, "sunshine list conversations").await?;
            all.extend(page.conversations);
            match page.meta.after_cursor.filter(|_| page.meta.has_more) {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        Ok(all)
    }

    /// `GET /conversations/{id}`.
    pub async fn get_conversation(&self, id: &str) -> Result<Conversation, ProviderError> {
        let rb = self
            .http
            .get(self.url(&format!("/conversations/{}", segment(id))));
        Ok(self
            .read::<ConversationEnvelope>(rb, "sunshine get conversation")
            .await?
            .conversation)
    }

    /// `POST /conversations/{id}/messages`: the (first) created message's id.
    pub async fn post_message(
        &self,
        conversation_id: &str,
        body: &Value,
    ) -> Result<String, ProviderError> {
        let op = "sunshine post message";
        let rb = self
            .http
            .post(self.url(&format!(
                "/conversations/{}/messages",
                segment(conversation_id)
            )))
            .json(body);
        let resp = self.send(rb, op).await?;
        let env: MessagesEnvelope = Self::json(resp, op, false).await?;
        env.messages
            .into_iter()
            .next()
            .map(|m| m.id)
            .ok_or_else(|| {
                ProviderError::permanent(
                    PROVIDER,
                    ProviderErrorKind::Protocol,
                    format!("{op}: the answer lists no message"),
                )
                .with_landing(Landing::MayHaveLanded)
            })
    }

    /// `GET /conversations/{id}/messages`: the newest page, or the page
    /// before cursor `before`.
    pub async fn list_messages(
        &self,
        conversation_id: &str,
        before: Option<&str>,
    ) -> Result<MessagePage, ProviderError> {
        let mut rb = self.http.get(self.url(&format!(
            "/conversations/{}/messages",
            segment(conversation_id)
        )));
        if let Some(b) = before {
            rb = rb.query(&[("page[before]", b)]);
        }
        self.read(rb, "sunshine list messages").await
    }

    /// `POST /conversations/{id}/passControl`.
    pub async fn pass_control(
        &self,
        conversation_id: &str,
        body: &Value,
    ) -> Result<(), ProviderError> {
        let rb = self
            .http
            .post(self.url(&format!(
                "/conversations/{}/passControl",
                segment(conversation_id)
            )))
            .json(body);
        self.send(rb, "sunshine pass control").await.map(drop)
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// The kind of a parse error only: its Display may quote the answer.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "missing or mistyped fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// `s` if it looks like an error code, not prose (titles may echo data).
fn code_like(s: &str) -> Option<&str> {
    let s = s.trim();
    let ok = (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    ok.then_some(s)
}

/// The first error `code` of a Sunshine error body, never its `title`.
pub fn error_code(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    v["errors"]
        .as_array()?
        .iter()
        .find_map(|e| e["code"].as_str().and_then(code_like))
        .map(str::to_string)
}

/// A non-2xx Sunshine answer as a typed error: status class, the error code.
pub fn error_from_parts(
    status: u16,
    body: &str,
    retry: Option<std::time::Duration>,
    op: &str,
) -> ProviderError {
    let (mut class, mut kind) = classify_status(status);
    let mut detail = error_code(body).unwrap_or_else(|| "(no error code)".to_string());
    match status {
        401 => detail.push_str(" (check the Conversations API key id and secret of this org)"),
        403 => detail.push_str(" (the Conversations API key lacks permission for this app)"),
        423 => {
            class = ErrorClass::Permanent;
            kind = ProviderErrorKind::Validation;
            detail.push_str(" (the conversation has reached Sunshine's message limit)");
        }
        _ => {}
    }
    ProviderError::http(PROVIDER, (class, kind), op, status, &detail, retry)
}

async fn error_from_response(resp: reqwest::Response, op: &str) -> ProviderError {
    let status = resp.status().as_u16();
    let ra = retry_after(resp.headers());
    let text = resp.text().await.unwrap_or_default();
    error_from_parts(status, &text, ra, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_titles_never_reach_the_message() {
        let body =
            r#"{"errors":[{"code":"bad_request","title":"Invalid email canary@example.com"}]}"#;
        let e = error_from_parts(400, body, None, "sunshine create user");
        assert!(e.message.contains("bad_request"), "{e}");
        assert!(!format!("{e} {e:?}").contains("canary"), "{e:?}");
        assert!(!e.is_transient());
    }

    #[test]
    fn limits_and_rate_limits_are_classified() {
        let e = error_from_parts(429, "{}", Some(std::time::Duration::from_secs(3)), "x");
        assert!(e.is_transient());
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(3)));
        let e = error_from_parts(
            423,
            r#"{"errors":[{"code":"locked","title":"t"}]}"#,
            None,
            "x",
        );
        assert!(!e.is_transient());
        assert!(e.message.contains("locked"));
        let e = error_from_parts(500, "oops", None, "x");
        assert!(e.is_transient() && e.may_have_landed());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("a b/c@d"), "a%20b%2Fc%40d");
        assert_eq!(segment("cust-1_x.y"), "cust-1_x.y");
    }

    #[test]
    fn the_authorization_value_is_sensitive() {
        let v = basic_auth("app_1", "s3cret");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("Basic"));
    }
}
