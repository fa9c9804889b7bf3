//! Salesforce Cases over the REST API, OAuth 2.0 client credentials.
//!
//! - `token`: the access token, cached in Redis for all replicas, one refresh at a time.
//! - `rest`: authenticated calls (one refresh-and-retry on 401), limit logging, SOQL.
//! - `case`: the Case body, CaseComment bodies, SOQL literals.
//! - `errors`: classification of REST and token-endpoint errors.
//! - `state`: the Redis marker that guards Case creation.
//!
//! Creation is idempotent per conversation. With an External ID field the
//! Case is upserted on the conversation id (Salesforce deduplicates). Without
//! one, a `pending` marker is written before the POST and the Case id after
//! it; a later attempt resumes with the id, or after `pending` looks the Case
//! up by Subject (+ SuppliedEmail) and creation time, and confirms it by the
//! `[escalator:{conversation_id}]` line that ends every Description (the
//! Description itself cannot be filtered in SOQL). A transcript too long for
//! the Description is attached once as a ContentVersion (looked up before it
//! is created), as part of both `create_ticket` and `find_ticket`.
mod case;
mod errors;
mod rest;
mod state;
mod token;

use super::{TicketProvider, TicketRequest};
use crate::config::{SalesforceConfig, SalesforceIdempotency};
use crate::contract::{CustomerMessage, ExternalKind, ProviderKind};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::store::{ExternalRef, Store};
use case::{
    CaseBody, TranscriptFile, comment_parts, is_api_name, is_record_id, same_comment, soql_string,
};
use chrono::{DateTime, Utc};
use errors::PROVIDER;
/// The admin's fix for a refused token grant (also used by `escalator doctor`).
pub use errors::token_error;
use rest::{Rest, path_segment};
use serde::Deserialize;
use serde_json::{Value, json};
use state::{CaseMarker, Markers};
use std::time::Duration;
use token::TokenSource;
pub(crate) use token::form_encode;

/// How far before `requested_at` the crash lookup searches (clock skew between
/// the event's producer and Salesforce).
const LOOKUP_SKEW: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Pages of query results read at most.
const MAX_PAGES: usize = 5;

pub struct SalesforceClient {
    org_id: String,
    config: SalesforceConfig,
    rest: Rest,
    markers: Markers,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CaseRow {
    id: String,
    #[serde(default)]
    case_number: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct IdRow {
    #[serde(rename = "Id")]
    _id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommentRow {
    #[serde(default)]
    comment_body: Option<String>,
}

/// A Case found or created: id and CaseNumber when known.
type Found = (String, Option<String>);

impl SalesforceClient {
    pub fn new(
        http: reqwest::Client,
        org_id: &str,
        config: SalesforceConfig,
        store: Store,
    ) -> Self {
        let ignored: Vec<&str> = config
            .extra_fields
            .keys()
            .chain(config.context_fields.keys())
            .map(String::as_str)
            .filter(|f| case::is_reserved(f))
            .collect();
        if !ignored.is_empty() {
            tracing::warn!(org_id, fields = ?ignored, "extra_fields/context_fields cannot set these Case fields: ignored");
        }
        let tokens = TokenSource::new(
            http.clone(),
            org_id,
            &config,
            store.connection(),
            store.prefix(),
        );
        let rest = Rest::new(
            http,
            org_id,
            &config.api_version,
            Duration::from_secs(config.limit_backoff_secs),
            tokens,
        );
        SalesforceClient {
            org_id: org_id.to_string(),
            rest,
            markers: Markers::new(store.connection(), store.prefix(), org_id),
            config,
        }
    }

    /// The External ID field, if configured (checked: it goes into URLs and SOQL).
    fn external_id_field(&self) -> Result<Option<String>, ProviderError> {
        match self.config.idempotency() {
            SalesforceIdempotency::Guarded => Ok(None),
            SalesforceIdempotency::ExternalId(f) if is_api_name(&f) => Ok(Some(f)),
            SalesforceIdempotency::ExternalId(f) => Err(ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Configuration,
                format!(
                    "external_id_field {f:?} is not a field API name (e.g. Escalator_Conversation_Id__c)"
                ),
            )),
        }
    }

    fn record_id(ticket: &ExternalRef) -> Result<&str, ProviderError> {
        if is_record_id(&ticket.id) {
            Ok(&ticket.id)
        } else {
            Err(ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!(
                    "{:?} is not a Salesforce record id",
                    crate::provider::http::clip(&ticket.id, 40)
                ),
            ))
        }
    }

    fn checked_id(id: String, op: &str) -> Result<String, ProviderError> {
        if is_record_id(&id) {
            Ok(id)
        } else {
            Err(ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("{op}: the answer holds no valid record id"),
            ))
        }
    }

    /// `POST /sobjects/Case/`
    async fn post_case(&self, case: &CaseBody) -> Result<String, ProviderError> {
        let body = Value::Object(case.fields.clone());
        let reply = self
            .rest
            .call("create case", &case.sensitive(), |http, base| {
                let rb = http.post(base.data("/sobjects/Case/")).json(&body);
                match &case.auto_assign {
                    Some(a) => rb.header("Sforce-Auto-Assign", a),
                    None => rb,
                }
            })
            .await?;
        let created: Created = reply.json("create case")?;
        Self::checked_id(created.id, "create case")
    }

    /// `PATCH /sobjects/Case/{field}/{conversation_id}`
    async fn upsert_case(
        &self,
        field: &str,
        conversation_id: &str,
        case: &CaseBody,
    ) -> Result<Found, ProviderError> {
        const OP: &str = "upsert case";
        let body = Value::Object(case.fields.clone());
        let path = format!("/sobjects/Case/{field}/{}", path_segment(conversation_id));
        let reply = self
            .rest
            .call(OP, &case.sensitive(), |http, base| {
                let rb = http.patch(base.data(&path)).json(&body);
                match &case.auto_assign {
                    Some(a) => rb.header("Sforce-Auto-Assign", a),
                    None => rb,
                }
            })
            .await
            .map_err(|e| {
                if e.status == Some(404) {
                    ProviderError::permanent(
                        PROVIDER,
                        ProviderErrorKind::Configuration,
                        format!(
                            "{OP}: HTTP 404: the External ID field {field} does not exist on Case or is not an External ID field (check external_id_field, and that the Run As user can edit it)"
                        ),
                    )
                    .with_status(404)
                } else {
                    e
                }
            })?;
        match reply.status {
            200 | 201 if !reply.body.iter().all(u8::is_ascii_whitespace) => {
                let created: Created = reply.json(OP)?;
                let id = Self::checked_id(created.id, OP)?;
                tracing::info!(
                    org_id = %self.org_id,
                    conversation_id,
                    case_id = %id,
                    created = reply.status == 201,
                    "salesforce case upserted"
                );
                Ok((id, None))
            }
            200 | 201 | 204 => self
                .lookup_external(field, conversation_id)
                .await?
                .ok_or_else(|| {
                    ProviderError::transient(
                        PROVIDER,
                        ProviderErrorKind::Protocol,
                        format!(
                            "{OP}: HTTP {} but no Case has {field} = this conversation id yet",
                            reply.status
                        ),
                    )
                }),
            300 => {
                let urls: Vec<String> = serde_json::from_slice(&reply.body).unwrap_or_default();
                let ids: Vec<&str> = urls.iter().filter_map(|u| u.rsplit('/').next()).collect();
                Err(ProviderError::permanent(
                    PROVIDER,
                    ProviderErrorKind::Validation,
                    format!(
                        "{OP}: HTTP 300: several Cases have {field} = this conversation id ({}): merge or delete the duplicates, and make {field} Unique",
                        if ids.is_empty() { "ids not given".to_string() } else { ids.join(", ") }
                    ),
                )
                .with_status(300))
            }
            s => Err(ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("{OP}: unexpected HTTP {s}"),
            )
            .with_status(s)),
        }
    }

    /// The Case whose External ID field holds the conversation id (the oldest if several).
    async fn lookup_external(
        &self,
        field: &str,
        conversation_id: &str,
    ) -> Result<Option<Found>, ProviderError> {
        let soql = format!(
            "SELECT Id, CaseNumber FROM Case WHERE {field} = {} ORDER BY CreatedDate ASC LIMIT 10",
            soql_string(conversation_id)
        );
        let rows: Vec<CaseRow> = self.rest.query("find case", &soql, 1, &[]).await?;
        if rows.len() > 1 {
            tracing::warn!(
                org_id = %self.org_id,
                conversation_id,
                cases = rows.len(),
                "several salesforce cases share this conversation id: using the oldest"
            );
        }
        rows.into_iter()
            .next()
            .map(|r| Ok((Self::checked_id(r.id, "find case")?, r.case_number)))
            .transpose()
    }

    /// Without an External ID field: Cases with our Subject (and SuppliedEmail)
    /// created since the escalation was requested, confirmed by the marker line
    /// at the end of their Description.
    async fn lookup_guarded(
        &self,
        case: &CaseBody,
        requested_at: DateTime<Utc>,
    ) -> Result<Option<Found>, ProviderError> {
        // A producer clock running ahead must not hide the case.
        let since = (requested_at.min(Utc::now()) - LOOKUP_SKEW).format("%Y-%m-%dT%H:%M:%SZ");
        let mut soql = format!(
            "SELECT Id, CaseNumber, Description FROM Case WHERE Subject = {}",
            soql_string(case.subject())
        );
        if let Some(email) = case.supplied_email() {
            soql.push_str(&format!(" AND SuppliedEmail = {}", soql_string(email)));
        }
        soql.push_str(&format!(
            " AND CreatedDate >= {since} ORDER BY CreatedDate ASC LIMIT 100"
        ));
        let rows: Vec<CaseRow> = self
            .rest
            .query("find case", &soql, MAX_PAGES, &case.sensitive())
            .await?;
        let candidates = rows.len();
        let found = rows
            .into_iter()
            .find(|r| case.is_marked(r.description.as_deref()));
        tracing::debug!(org_id = %self.org_id, candidates, found = found.is_some(), "salesforce case lookup by subject");
        found
            .map(|r| Ok((Self::checked_id(r.id, "find case")?, r.case_number)))
            .transpose()
    }

    /// `GET /sobjects/Case/{id}?fields=CaseNumber`
    async fn case_number(&self, case_id: &str) -> Result<Option<String>, ProviderError> {
        #[derive(Deserialize)]
        struct Number {
            #[serde(rename = "CaseNumber", default)]
            case_number: Option<String>,
        }
        let path = format!("/sobjects/Case/{case_id}");
        let reply = self
            .rest
            .call("read case", &[], |http, base| {
                http.get(base.data(&path))
                    .query(&[("fields", "CaseNumber")])
            })
            .await?;
        Ok(reply.json::<Number>("read case")?.case_number)
    }

    /// Attach the full transcript unless an earlier attempt did.
    async fn ensure_transcript(
        &self,
        case_id: &str,
        file: &TranscriptFile,
    ) -> Result<(), ProviderError> {
        let soql = format!(
            "SELECT Id FROM ContentVersion WHERE FirstPublishLocationId = {} AND PathOnClient = {} LIMIT 1",
            soql_string(case_id),
            soql_string(&file.path_on_client)
        );
        let existing: Vec<IdRow> = self.rest.query("find transcript", &soql, 1, &[]).await?;
        if !existing.is_empty() {
            tracing::debug!(org_id = %self.org_id, case_id, "transcript already attached");
            return Ok(());
        }
        let body = file.content_version(case_id);
        let reply = self
            .rest
            .call("attach transcript", &[], |http, base| {
                http.post(base.data("/sobjects/ContentVersion/"))
                    .json(&body)
            })
            .await?;
        let created: Created = reply.json("attach transcript")?;
        tracing::info!(org_id = %self.org_id, case_id, content_version_id = %created.id, "transcript attached to the case");
        Ok(())
    }

    /// Complete a Case found or created: CaseNumber, transcript file, the reference.
    async fn finish(
        &self,
        case_id: String,
        number: Option<String>,
        case: &CaseBody,
    ) -> Result<ExternalRef, ProviderError> {
        let number = match number {
            Some(n) => Some(n),
            None => self.case_number(&case_id).await?,
        };
        if let Some(file) = &case.attachment {
            self.ensure_transcript(&case_id, file).await?;
        }
        let instance = self.rest.instance_url().await?;
        Ok(ExternalRef {
            kind: ExternalKind::SalesforceCase,
            url: format!("{instance}/lightning/r/Case/{case_id}/view"),
            id: case_id,
            number,
            requester_id: None,
        })
    }

    /// Bodies of the Case's comments, newest first.
    async fn comment_bodies(&self, case_id: &str) -> Result<Vec<String>, ProviderError> {
        let soql = format!(
            "SELECT Id, CommentBody FROM CaseComment WHERE ParentId = {} ORDER BY CreatedDate DESC",
            soql_string(case_id)
        );
        let rows: Vec<CommentRow> = self
            .rest
            .query("list case comments", &soql, MAX_PAGES, &[])
            .await?;
        Ok(rows.into_iter().filter_map(|r| r.comment_body).collect())
    }

    async fn post_comment(&self, case_id: &str, body: &str) -> Result<(), ProviderError> {
        let json = json!({ "ParentId": case_id, "CommentBody": body });
        let reply = self
            .rest
            .call("add case comment", &[], |http, base| {
                http.post(base.data("/sobjects/CaseComment/")).json(&json)
            })
            .await?;
        let created: Created = reply.json("add case comment")?;
        tracing::info!(org_id = %self.org_id, case_id, case_comment_id = %created.id, "case comment added");
        Ok(())
    }
}

#[async_trait::async_trait]
impl TicketProvider for SalesforceClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Salesforce
    }

    async fn create_ticket(&self, req: TicketRequest<'_>) -> Result<ExternalRef, ProviderError> {
        let conv = req.escalation.conversation_id.as_str();
        let field = self.external_id_field()?;
        let case = CaseBody::build(&self.config, req, field.as_deref());
        let marker = self.markers.get(conv).await?;
        if let Some(CaseMarker::Created(id)) = marker {
            tracing::info!(org_id = %self.org_id, conversation_id = conv, case_id = %id, "salesforce case exists: resuming");
            return self.finish(id, None, &case).await;
        }
        let (id, number) = match &field {
            Some(f) => self.upsert_case(f, conv, &case).await?,
            None => {
                let found = match marker {
                    Some(CaseMarker::Pending) => {
                        self.lookup_guarded(&case, req.escalation.requested_at)
                            .await?
                    }
                    _ => None,
                };
                match found {
                    Some(found) => {
                        tracing::info!(org_id = %self.org_id, conversation_id = conv, case_id = %found.0, "salesforce case of an earlier attempt found");
                        found
                    }
                    None => {
                        if marker.is_none() && !self.markers.set_pending(conv).await? {
                            return Err(ProviderError::transient(
                                PROVIDER,
                                ProviderErrorKind::Unavailable,
                                "another attempt is creating this conversation's case",
                            ));
                        }
                        let id = self.post_case(&case).await?;
                        tracing::info!(org_id = %self.org_id, conversation_id = conv, case_id = %id, "salesforce case created");
                        (id, None)
                    }
                }
            }
        };
        self.markers.set_created(conv, &id).await;
        self.finish(id, number, &case).await
    }

    async fn find_ticket(
        &self,
        req: TicketRequest<'_>,
    ) -> Result<Option<ExternalRef>, ProviderError> {
        let conv = req.escalation.conversation_id.as_str();
        let field = self.external_id_field()?;
        let case = CaseBody::build(&self.config, req, field.as_deref());
        let found = match self.markers.get(conv).await? {
            Some(CaseMarker::Created(id)) => Some((id, None)),
            _ => match &field {
                Some(f) => self.lookup_external(f, conv).await?,
                None => {
                    self.lookup_guarded(&case, req.escalation.requested_at)
                        .await?
                }
            },
        };
        let Some((id, number)) = found else {
            tracing::info!(org_id = %self.org_id, conversation_id = conv, "no salesforce case of an earlier attempt");
            return Ok(None);
        };
        tracing::info!(org_id = %self.org_id, conversation_id = conv, case_id = %id, "salesforce case of an earlier attempt found");
        self.markers.set_created(conv, &id).await;
        // An earlier attempt may have stopped before attaching the transcript.
        self.finish(id, number, &case).await.map(Some)
    }

    async fn add_customer_message(
        &self,
        ticket: &ExternalRef,
        msg: &CustomerMessage,
    ) -> Result<(), ProviderError> {
        let case_id = Self::record_id(ticket)?;
        let parts = comment_parts(msg);
        // A split message may have been cut short by a crash: add only the missing parts.
        let existing = if parts.len() > 1 {
            self.comment_bodies(case_id).await?
        } else {
            Vec::new()
        };
        for part in &parts {
            if existing.iter().any(|b| same_comment(b, part)) {
                continue;
            }
            self.post_comment(case_id, part).await?;
        }
        Ok(())
    }

    async fn has_customer_message(
        &self,
        ticket: &ExternalRef,
        msg: &CustomerMessage,
        // The comment header carries a hash of the message id: time is not needed.
        _since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, ProviderError> {
        let case_id = Self::record_id(ticket)?;
        let bodies = self.comment_bodies(case_id).await?;
        Ok(comment_parts(msg)
            .iter()
            .all(|p| bodies.iter().any(|b| same_comment(b, p))))
    }
}
