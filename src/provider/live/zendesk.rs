//! Placeholder: the Zendesk live client (Sunshine Conversations) is being
//! written on the `sunshine` branch; this keeps the seam compiling.
use super::{Availability, HandoverJournal, HandoverRequest, LiveChatProvider, LiveSession};
use crate::config::{ZendeskConfig, ZendeskLiveConfig};
use crate::contract::{CustomerMessage, ProviderKind};
use crate::error::{ProcessError, ProviderError, ProviderErrorKind};

pub struct ZendeskLive;

impl ZendeskLive {
    pub fn new(
        _http: reqwest::Client,
        _org_id: &str,
        _zendesk: ZendeskConfig,
        _live: ZendeskLiveConfig,
    ) -> ZendeskLive {
        ZendeskLive
    }
}

fn todo() -> ProviderError {
    ProviderError::permanent("zendesk", ProviderErrorKind::Configuration, "not built")
}

#[async_trait::async_trait]
impl LiveChatProvider for ZendeskLive {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Zendesk
    }
    async fn availability(&self) -> Result<Availability, ProviderError> {
        Err(todo())
    }
    async fn hand_over(
        &self,
        _req: HandoverRequest<'_>,
        _journal: &dyn HandoverJournal,
    ) -> Result<LiveSession, ProcessError> {
        Err(todo().into())
    }
    async fn send_customer_message(
        &self,
        _s: &LiveSession,
        _m: &CustomerMessage,
    ) -> Result<(), ProviderError> {
        Err(todo())
    }
    async fn has_customer_message(
        &self,
        _s: &LiveSession,
        _m: &CustomerMessage,
        _since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, ProviderError> {
        Err(todo())
    }
    async fn typing(&self, _s: &LiveSession, _t: bool) -> Result<(), ProviderError> {
        Err(todo())
    }
    async fn customer_left(&self, _s: &LiveSession, _t: &str) -> Result<(), ProviderError> {
        Err(todo())
    }
    async fn agent_name(&self, _id: &str) -> Result<Option<String>, ProviderError> {
        Err(todo())
    }
}
