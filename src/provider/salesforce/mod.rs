//! Salesforce Cases over the REST API, OAuth 2.0 client credentials.
//! (Placeholder until the Salesforce issue lands: every call fails permanently.)
use super::{TicketProvider, TicketRequest};
use crate::config::SalesforceConfig;
use crate::contract::{CustomerMessage, ProviderKind};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::store::{ExternalRef, Store};

pub struct SalesforceClient {
    _http: reqwest::Client,
    _config: SalesforceConfig,
    _store: Store,
}

impl SalesforceClient {
    pub fn new(http: reqwest::Client, _org_id: &str, config: SalesforceConfig, store: Store) -> Self {
        SalesforceClient { _http: http, _config: config, _store: store }
    }
}

fn unsupported() -> ProviderError {
    ProviderError::permanent("salesforce", ProviderErrorKind::Configuration, "Salesforce is not supported yet")
}

#[async_trait::async_trait]
impl TicketProvider for SalesforceClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Salesforce
    }
    async fn create_ticket(&self, _req: TicketRequest<'_>) -> Result<ExternalRef, ProviderError> {
        Err(unsupported())
    }
    async fn find_ticket(&self, _req: TicketRequest<'_>) -> Result<Option<ExternalRef>, ProviderError> {
        Err(unsupported())
    }
    async fn add_customer_message(&self, _t: &ExternalRef, _m: &CustomerMessage) -> Result<(), ProviderError> {
        Err(unsupported())
    }
    async fn has_customer_message(&self, _t: &ExternalRef, _m: &CustomerMessage) -> Result<bool, ProviderError> {
        Err(unsupported())
    }
}
