//! TEMPORARY STUB (lead): replaced by the miawclient branch.
#![allow(dead_code, unused_variables)]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SalesforceLiveConfig {
    #[serde(default)]
    pub enabled: bool,
    pub org_id: String,
    pub developer_name: String,
    pub scrt_url: String,
    #[serde(default)]
    pub transcript_field: Option<String>,
    #[serde(default)]
    pub token_lifetime_minutes: Option<u32>,
}
impl SalesforceLiveConfig {
    pub fn routing_attributes(
        &self,
        e: &crate::contract::EscalationRequested,
    ) -> serde_json::Map<String, serde_json::Value> {
        Default::default()
    }
}
