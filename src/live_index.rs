//! Redis state of live conversations beside the record: the indexes that
//! map a provider's ids back to our conversation (webhooks name only the
//! provider's ids), the hand-over journal, and the agent-name cache.
//!
//! | key | type | content | TTL |
//! |---|---|---|---|
//! | `P:link:{org}:{provider}:conversation:{id}` | string | our conversation id, from the provider's conversation id (Sunshine) | state TTL |
//! | `P:link:{org}:{provider}:ticket:{id}` | string | our conversation id, from a ticket id | state TTL |
//! | `P:link:{org}:{provider}:tag:{tag}` | string | our conversation id, from the correlation tag on its ticket | state TTL |
//! | `P:conv:{T}:handover` | hash | step -> what it produced (hand-over journal) | state TTL |
//! | `P:agent:{org}:{provider}:{id}` | string | an agent's display name (Users API answer) | 1 day |
//!
//! Index keys are single-key reads and writes (no hash tag needed on a
//! cluster); the journal shares the conversation's hash tag.
use crate::contract::ProviderKind;
use crate::error::InfraError;
use crate::provider::live::{HandoverJournal, Link};
use crate::store::Store;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

/// How long an agent's name is cached.
const AGENT_NAME_TTL_SECS: u64 = 24 * 3600;

/// What a provider id is, in an index key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Conversation,
    Ticket,
    Tag,
}

impl IdKind {
    fn as_str(self) -> &'static str {
        match self {
            IdKind::Conversation => "conversation",
            IdKind::Ticket => "ticket",
            IdKind::Tag => "tag",
        }
    }
}

/// The ticket tag that names a conversation: `esc_` and 20 hex digits of
/// SHA-256(org, conversation). Zendesk tags are lower case without spaces,
/// and a conversation id may be neither; the tag index maps it back.
pub fn correlation_tag(org: &str, conversation: &str) -> String {
    let digest = Sha256::new()
        .chain_update(org)
        .chain_update([0u8])
        .chain_update(conversation)
        .finalize();
    format!("esc_{}", &hex::encode(digest)[..20])
}

/// The live-conversation keys of one store.
#[derive(Clone)]
pub struct LiveIndex {
    store: Store,
}

impl LiveIndex {
    pub fn new(store: &Store) -> LiveIndex {
        LiveIndex {
            store: store.clone(),
        }
    }

    fn link_key(&self, org: &str, provider: ProviderKind, kind: IdKind, id: &str) -> String {
        format!(
            "{}:link:{org}:{provider}:{}:{id}",
            self.store.prefix(),
            kind.as_str()
        )
    }

    /// Map a provider id to our conversation.
    pub async fn link(
        &self,
        org: &str,
        provider: ProviderKind,
        kind: IdKind,
        id: &str,
        conversation: &str,
    ) -> Result<(), InfraError> {
        let mut c = self.store.connection();
        let _: () = c
            .set_ex(
                self.link_key(org, provider, kind, id),
                conversation,
                self.store.state_ttl_secs().max(60) as u64,
            )
            .await?;
        Ok(())
    }

    /// Our conversation for each of `ids` (in order; `None` where unknown), in one trip.
    pub async fn resolve(
        &self,
        org: &str,
        provider: ProviderKind,
        ids: &[(IdKind, &str)],
    ) -> Result<Vec<Option<String>>, InfraError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|(kind, id)| self.link_key(org, provider, *kind, id))
            .collect();
        let mut c = self.store.connection();
        let found: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        Ok(found)
    }

    /// The hand-over journal of one conversation.
    pub fn journal(&self, org: &str, provider: ProviderKind, conversation: &str) -> Journal {
        Journal {
            index: self.clone(),
            key: self.store.key(org, conversation, ":handover"),
            org: org.to_string(),
            provider,
            conversation: conversation.to_string(),
        }
    }

    fn agent_key(&self, org: &str, provider: ProviderKind, id: &str) -> String {
        format!("{}:agent:{org}:{provider}:{id}", self.store.prefix())
    }

    pub async fn cached_agent_name(
        &self,
        org: &str,
        provider: ProviderKind,
        id: &str,
    ) -> Result<Option<String>, InfraError> {
        let mut c = self.store.connection();
        Ok(c.get(self.agent_key(org, provider, id)).await?)
    }

    pub async fn cache_agent_name(
        &self,
        org: &str,
        provider: ProviderKind,
        id: &str,
        name: &str,
    ) -> Result<(), InfraError> {
        let mut c = self.store.connection();
        let _: () = c
            .set_ex(self.agent_key(org, provider, id), name, AGENT_NAME_TTL_SECS)
            .await?;
        Ok(())
    }
}

/// [`HandoverJournal`] in Redis (`P:conv:{T}:handover`).
pub struct Journal {
    index: LiveIndex,
    key: String,
    org: String,
    provider: ProviderKind,
    conversation: String,
}

#[async_trait::async_trait]
impl HandoverJournal for Journal {
    async fn get(&self, step: &str) -> Result<Option<String>, InfraError> {
        let mut c = self.index.store.connection();
        Ok(c.hget(&self.key, step).await?)
    }

    async fn put(&self, step: &str, value: &str) -> Result<(), InfraError> {
        let mut c = self.index.store.connection();
        let ttl = self.index.store.state_ttl_secs().max(60);
        let _: () = redis::pipe()
            .atomic()
            .hset(&self.key, step, value)
            .ignore()
            .expire(&self.key, ttl)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    async fn link(&self, link: Link<'_>) -> Result<(), InfraError> {
        let (kind, id) = match link {
            Link::ProviderConversation(id) => (IdKind::Conversation, id),
            Link::Ticket(id) => (IdKind::Ticket, id),
        };
        self.index
            .link(&self.org, self.provider, kind, id, &self.conversation)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_correlation_tag_is_a_valid_zendesk_tag_unique_per_conversation() {
        let a = correlation_tag("acme", "Conv 1/ä");
        assert!(a.starts_with("esc_") && a.len() == 24);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_ne!(a, correlation_tag("acme", "Conv 2"));
        assert_ne!(a, correlation_tag("acm", "eConv 1/ä"));
        assert_eq!(a, correlation_tag("acme", "Conv 1/ä"));
    }
}
