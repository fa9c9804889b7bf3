//! Provider clients behind one trait, so the pipeline does not care whether a
//! ticket is a Zendesk ticket or a Salesforce Case.
pub mod budget;
pub mod http;
pub mod in_flight;
pub mod live;
pub mod retry;
pub mod salesforce;
pub mod transcript;
pub mod zendesk;

use crate::config::{Config, OrgConfig};
use crate::contract::{CustomerMessage, EscalationRequested, ProviderKind};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::store::{ExternalRef, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a ticket provider needs to create a ticket or case.
#[derive(Debug, Clone, Copy)]
pub struct TicketRequest<'a> {
    pub org: &'a OrgConfig,
    pub escalation: &'a EscalationRequested,
    /// Why a live request became a ticket, when it did.
    pub fallback_reason: Option<crate::contract::FallbackReason>,
}

/// The asynchronous path: a ticket (Zendesk) or a Case (Salesforce).
///
/// Creation must be idempotent per conversation: the pipeline calls
/// `find_ticket` before `create_ticket` whenever an earlier attempt may have
/// reached the provider, and `create_ticket` itself should use the provider's
/// own idempotency mechanism when there is one.
#[async_trait::async_trait]
pub trait TicketProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Create the ticket or case for this escalation.
    async fn create_ticket(&self, req: TicketRequest<'_>) -> Result<ExternalRef, ProviderError>;

    /// Find a ticket an earlier (crashed) attempt may have created.
    async fn find_ticket(
        &self,
        req: TicketRequest<'_>,
    ) -> Result<Option<ExternalRef>, ProviderError>;

    /// Add a later customer message to the ticket.
    async fn add_customer_message(
        &self,
        ticket: &ExternalRef,
        msg: &CustomerMessage,
    ) -> Result<(), ProviderError>;

    /// Whether an earlier (crashed) attempt already added this message.
    /// `since` is when the first attempt began: nothing older can be it.
    async fn has_customer_message(
        &self,
        ticket: &ExternalRef,
        msg: &CustomerMessage,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, ProviderError>;
}

/// Shared HTTP settings of all provider clients.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub timeout: Duration,
}

/// The providers of one org: its ticket path and its live path, per
/// provider kind, sharing one HTTP client.
#[derive(Clone, Default)]
pub struct OrgProviders {
    tickets: HashMap<ProviderKind, Arc<dyn TicketProvider>>,
    live: HashMap<ProviderKind, Arc<dyn live::LiveChatProvider>>,
    /// The Salesforce messaging client (its stream reader needs it directly).
    miaw: Option<live::miaw::MiawClient>,
}

/// The providers of every configured org, built once at start.
#[derive(Clone, Default)]
pub struct Providers {
    orgs: HashMap<String, OrgProviders>,
}

impl Providers {
    pub fn build(config: &Config, store: &Store, http: &HttpSettings) -> Result<Providers, String> {
        let client = http::client(http.timeout)?;
        let mut orgs = HashMap::new();
        for org in config.orgs() {
            orgs.insert(org.org_id.clone(), Self::org(org, &client, store));
        }
        Ok(Providers { orgs })
    }

    fn org(org: &OrgConfig, client: &reqwest::Client, store: &Store) -> OrgProviders {
        let mut bundle = OrgProviders::default();
        if let Some(z) = org.zendesk() {
            let budget = z.requests_per_minute.map(|rpm| {
                budget::RateBudget::per_minute(
                    "zendesk",
                    store.connection(),
                    format!("{}:budget:zendesk:{}", store.prefix(), org.org_id),
                    rpm,
                )
            });
            bundle.tickets.insert(
                ProviderKind::Zendesk,
                Arc::new(
                    zendesk::ZendeskClient::new(client.clone(), z.clone()).with_budget(budget),
                ),
            );
            if let Some(l) = z.live_chat().filter(|_| org.live_chat) {
                bundle.live.insert(
                    ProviderKind::Zendesk,
                    Arc::new(live::zendesk::ZendeskLive::new(
                        client.clone(),
                        &org.org_id,
                        z.clone(),
                        l.clone(),
                    )),
                );
            }
        }
        if let Some(s) = org.salesforce() {
            bundle.tickets.insert(
                ProviderKind::Salesforce,
                Arc::new(salesforce::SalesforceClient::new(
                    client.clone(),
                    &org.org_id,
                    s.clone(),
                    store.clone(),
                )),
            );
            if let Some(l) = s.live.as_ref().filter(|l| l.enabled && org.live_chat) {
                let miaw = live::miaw::MiawClient::new(client.clone(), l);
                bundle.live.insert(
                    ProviderKind::Salesforce,
                    Arc::new(live::salesforce::SalesforceLive::new(
                        miaw.clone(),
                        &org.org_id,
                        s,
                        l.clone(),
                        store,
                    )),
                );
                bundle.miaw = Some(miaw);
            }
        }
        bundle
    }

    /// The ticket provider of `org` for `kind`, or a permanent configuration error.
    pub fn ticket(
        &self,
        org: &str,
        kind: ProviderKind,
    ) -> Result<Arc<dyn TicketProvider>, ProviderError> {
        self.orgs
            .get(org)
            .and_then(|b| b.tickets.get(&kind))
            .cloned()
            .ok_or_else(|| {
                ProviderError::permanent(
                    kind.as_str(),
                    ProviderErrorKind::Configuration,
                    format!(
                        "org {org} has no {kind} settings: add [orgs.{org}.{kind}] to the config"
                    ),
                )
            })
    }

    /// The live-chat provider of `org` for `kind`, when live chat is set up
    /// and switched on for both.
    pub fn live(&self, org: &str, kind: ProviderKind) -> Option<Arc<dyn live::LiveChatProvider>> {
        self.orgs.get(org).and_then(|b| b.live.get(&kind)).cloned()
    }

    /// The Salesforce messaging client of `org`, when its live chat is on.
    pub fn miaw(&self, org: &str) -> Option<live::miaw::MiawClient> {
        self.orgs.get(org).and_then(|b| b.miaw.clone())
    }

    /// Whether any org streams Salesforce messaging events.
    pub fn any_miaw(&self) -> bool {
        self.orgs.values().any(|b| b.miaw.is_some())
    }
}
