//! The Salesforce Case provider against the simulator and a real Redis
//! (127.0.0.1:6379). Every test uses its own key prefix and deletes its keys.
use base64::Engine;
use chrono::Utc;
use escalator::config::{OrgConfig, SalesforceConfig};
use escalator::contract::{
    Customer, CustomerMessage, EscalationRequested, ExternalKind, Mode, ProviderKind, Role,
    TranscriptEntry,
};
use escalator::error::{ErrorClass, ProviderError, ProviderErrorKind};
use escalator::provider::salesforce::SalesforceClient;
use escalator::provider::{TicketProvider, TicketRequest, transcript};
use escalator::secret::Secret;
use escalator::sim::{self, FaultRule, SimHandle, SimSettings};
use escalator::store::{ExternalRef, Store};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const ORG: &str = "acme";
const EXT_FIELD: &str = "Escalator_Conversation_Id__c";
const CASES: &str = "/services/data/v62.0/sobjects/Case";
const CONTENT_VERSION: &str = "/services/data/v62.0/sobjects/ContentVersion";
const CASE_COMMENT: &str = "/services/data/v62.0/sobjects/CaseComment";
const TOKEN: &str = "/services/oauth2/token";

struct Env {
    sim: SimHandle,
    store: Store,
    http: reqwest::Client,
}

async fn env() -> Env {
    let sim = sim::start("127.0.0.1:0".parse().unwrap(), SimSettings::default())
        .await
        .unwrap();
    Env {
        sim,
        store: store(&new_prefix()).await,
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

fn new_prefix() -> String {
    format!("test-sf-{}", uuid::Uuid::new_v4())
}

async fn store(prefix: &str) -> Store {
    Store::connect("redis://127.0.0.1:6379", prefix, Duration::from_secs(3600))
        .await
        .expect("redis at 127.0.0.1:6379")
}

impl Env {
    fn config(&self) -> SalesforceConfig {
        SalesforceConfig {
            my_domain: self.sim.base_url(),
            client_id: "sim-client-id".into(),
            client_secret: Secret::new("sim-client-secret"),
            api_version: "v62.0".into(),
            origin: Some("Chat".into()),
            status: None,
            priority: None,
            record_type_id: None,
            owner_id: None,
            assignment_rule_id: None,
            context_fields: BTreeMap::new(),
            extra_fields: BTreeMap::new(),
            external_id_field: None,
            limit_backoff_secs: 120,
            token_auth_basic: false,
            live: None,
        }
    }

    fn upsert_config(&self) -> SalesforceConfig {
        SalesforceConfig {
            external_id_field: Some(EXT_FIELD.into()),
            ..self.config()
        }
    }

    fn client(&self, config: SalesforceConfig) -> SalesforceClient {
        SalesforceClient::new(self.http.clone(), ORG, config, self.store.clone())
    }

    /// A client of another replica: same Redis prefix, its own process state.
    fn client_with_store(&self, config: SalesforceConfig, store: &Store) -> SalesforceClient {
        SalesforceClient::new(self.http.clone(), ORG, config, store.clone())
    }

    fn requests_to(&self, method: &str, prefix: &str) -> Vec<escalator::sim::RecordedRequest> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .collect()
    }

    fn records(&self, sobject: &str) -> Vec<escalator::sim::SimSfRecord> {
        self.sim
            .salesforce_attachments()
            .into_iter()
            .filter(|r| r.sobject == sobject)
            .collect()
    }

    async fn cleanup(self) {
        self.store.delete_all().await.unwrap();
        self.sim.shutdown().await;
    }
}

fn org(config: &SalesforceConfig) -> OrgConfig {
    OrgConfig {
        org_id: ORG.into(),
        provider: ProviderKind::Salesforce,
        live_chat: true,
        zendesk: None,
        salesforce: Some(config.clone()),
    }
}

fn escalation(conv: &str) -> EscalationRequested {
    EscalationRequested {
        org_id: ORG.into(),
        conversation_id: conv.into(),
        mode: Mode::Ticket,
        provider: None,
        customer: Customer {
            id: "cust-1".into(),
            name: Some("Ada Lovelace".into()),
            email: Some("ada@example.com".into()),
        },
        subject: Some("Cannot log in".into()),
        summary: Some("The customer cannot log in since the update.".into()),
        transcript: vec![
            TranscriptEntry {
                role: Role::Customer,
                text: "I cannot log in".into(),
                sent_at: Utc::now(),
            },
            TranscriptEntry {
                role: Role::Ai,
                text: "Let me get you a human.".into(),
                sent_at: Utc::now(),
            },
        ],
        context: BTreeMap::from([
            ("plan".to_string(), json!("gold")),
            ("locale".to_string(), json!("de-CH")),
            ("seats".to_string(), json!(12)),
        ]),
        assignment: None,
        requested_at: Utc::now(),
    }
}

fn long_escalation(conv: &str, chars: usize) -> EscalationRequested {
    let mut e = escalation(conv);
    e.transcript = vec![TranscriptEntry {
        role: Role::Customer,
        text: "z".repeat(chars),
        sent_at: Utc::now(),
    }];
    e
}

async fn create(
    client: &SalesforceClient,
    config: &SalesforceConfig,
    e: &EscalationRequested,
) -> Result<ExternalRef, ProviderError> {
    let o = org(config);
    client
        .create_ticket(TicketRequest {
            org: &o,
            escalation: e,
            fallback_reason: None,
        })
        .await
}

async fn find(
    client: &SalesforceClient,
    config: &SalesforceConfig,
    e: &EscalationRequested,
) -> Result<Option<ExternalRef>, ProviderError> {
    let o = org(config);
    client
        .find_ticket(TicketRequest {
            org: &o,
            escalation: e,
            fallback_reason: None,
        })
        .await
}

fn fault(method: &str, path: &str, status: u16, body: Option<&str>) -> FaultRule {
    FaultRule {
        method: Some(method.into()),
        path_prefix: path.into(),
        times: Some(1),
        status: Some(status),
        body: body.map(str::to_string),
        ..FaultRule::default()
    }
}

fn conv() -> String {
    format!("conv-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn case_carries_every_mapped_field() {
    let env = env().await;
    let mut config = env.config();
    config.status = Some("New".into());
    config.priority = Some("High".into());
    config.record_type_id = Some("012000000000001AAA".into());
    config.owner_id = Some("00G000000000001AAA".into());
    config.assignment_rule_id = Some("01Q000000000001AAA".into());
    config.context_fields = BTreeMap::from([
        ("Plan__c".to_string(), "plan".to_string()),
        ("Locale__c".to_string(), "locale".to_string()),
        ("Seats__c".to_string(), "seats".to_string()),
        ("Absent__c".to_string(), "not-in-the-event".to_string()),
    ]);
    config.extra_fields = BTreeMap::from([
        ("Type".to_string(), toml::Value::String("Question".into())),
        ("Reason".to_string(), toml::Value::String("Other".into())),
    ]);
    let client = env.client(config.clone());
    let c = conv();
    let e = escalation(&c);
    let r = create(&client, &config, &e).await.unwrap();

    let cases = env.sim.salesforce_cases();
    assert_eq!(cases.len(), 1);
    let case = &cases[0];
    let f = &case.fields;
    assert_eq!(r.kind, ExternalKind::SalesforceCase);
    assert_eq!(r.id, case.id);
    assert_eq!(r.number.as_deref(), Some(case.case_number.as_str()));
    assert_eq!(
        r.url,
        format!("{}/lightning/r/Case/{}/view", env.sim.base_url(), case.id)
    );
    assert_eq!(f["Subject"], "Cannot log in");
    let description = f["Description"].as_str().unwrap();
    assert!(description.contains("I cannot log in"));
    assert!(description.contains("The customer cannot log in since the update."));
    assert!(
        description
            .trim_end()
            .ends_with(&format!("[escalator:{c}]"))
    );
    assert_eq!(f["SuppliedName"], "Ada Lovelace");
    assert_eq!(f["SuppliedEmail"], "ada@example.com");
    assert_eq!(f["Origin"], "Chat");
    assert_eq!(f["Status"], "New");
    assert_eq!(f["Priority"], "High");
    assert_eq!(f["RecordTypeId"], "012000000000001AAA");
    assert_eq!(f["OwnerId"], "00G000000000001AAA");
    assert_eq!(f["Plan__c"], "gold");
    assert_eq!(f["Locale__c"], "de-CH");
    assert_eq!(f["Seats__c"], 12);
    assert_eq!(f["Type"], "Question");
    assert_eq!(f["Reason"], "Other");
    assert!(!f.contains_key("Absent__c"));
    // An owner switches assignment rules off.
    let post = &env.requests_to("POST", CASES)[0];
    let header = post.headers.iter().find(|(k, _)| k == "sforce-auto-assign");
    assert_eq!(header.map(|(_, v)| v.as_str()), Some("FALSE"));
    assert!(env.records("ContentVersion").is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn assignment_header_follows_the_config() {
    let env = env().await;
    let mut config = env.config();
    config.assignment_rule_id = Some("01Q000000000001AAA".into());
    create(&env.client(config.clone()), &config, &escalation(&conv()))
        .await
        .unwrap();
    config.assignment_rule_id = None;
    create(&env.client(config.clone()), &config, &escalation(&conv()))
        .await
        .unwrap();
    let posts = env.requests_to("POST", CASES);
    let header = |i: usize| {
        posts[i]
            .headers
            .iter()
            .find(|(k, _)| k == "sforce-auto-assign")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header(0).as_deref(), Some("01Q000000000001AAA"));
    assert_eq!(header(1), None);
    env.cleanup().await;
}

#[tokio::test]
async fn token_is_fetched_once_and_shared_by_replicas() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    for _ in 0..50 {
        create(&client, &config, &escalation(&conv()))
            .await
            .unwrap();
    }
    assert_eq!(env.sim.salesforce_cases().len(), 50);
    assert_eq!(env.sim.token_requests(), 1);
    // Another replica with the same Redis prefix reuses the token.
    let replica = env.client_with_store(config.clone(), &store(env.store.prefix()).await);
    create(&replica, &config, &escalation(&conv()))
        .await
        .unwrap();
    assert_eq!(env.sim.token_requests(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_creates_from_two_replicas_fetch_one_token() {
    let env = env().await;
    let config = env.config();
    let a = env.client(config.clone());
    let b = env.client_with_store(config.clone(), &store(env.store.prefix()).await);
    let events: Vec<EscalationRequested> = (0..20).map(|_| escalation(&conv())).collect();
    let calls = events.iter().enumerate().map(|(i, e)| {
        let client = if i % 2 == 0 { &a } else { &b };
        create(client, &config, e)
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(env.sim.salesforce_cases().len(), 20);
    assert_eq!(env.sim.token_requests(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn expired_token_is_refreshed_once() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    create(&client, &config, &escalation(&conv()))
        .await
        .unwrap();
    assert_eq!(env.sim.token_requests(), 1);
    env.sim.expire_salesforce_tokens();
    create(&client, &config, &escalation(&conv()))
        .await
        .unwrap();
    assert_eq!(env.sim.token_requests(), 2);
    let refused = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(refused, 1);

    // Many tasks of two replicas hit the expired token at once: one refresh.
    env.sim.expire_salesforce_tokens();
    let replica = env.client_with_store(config.clone(), &store(env.store.prefix()).await);
    let events: Vec<EscalationRequested> = (0..10).map(|_| escalation(&conv())).collect();
    let calls = events.iter().enumerate().map(|(i, e)| {
        let c = if i % 2 == 0 { &client } else { &replica };
        create(c, &config, e)
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(env.sim.token_requests(), 3);
    assert_eq!(env.sim.salesforce_cases().len(), 12);
    env.cleanup().await;
}

#[tokio::test]
async fn token_endpoint_errors_are_permanent_and_name_the_fix() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    let cases = [
        (
            r#"{"error":"invalid_grant","error_description":"request not supported on this domain"}"#,
            ProviderErrorKind::Configuration,
            "My Domain host (e.g. acme.my.salesforce.com)",
        ),
        (
            r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
            ProviderErrorKind::Authentication,
            "consumer key and consumer secret",
        ),
        (
            r#"{"error":"invalid_grant","error_description":"no client credentials user enabled"}"#,
            ProviderErrorKind::Configuration,
            "Run As user",
        ),
        (
            r#"{"error":"unsupported_grant_type","error_description":"grant type not supported"}"#,
            ProviderErrorKind::Configuration,
            "enable the client credentials flow",
        ),
        (
            r#"{"error":"inactive_org","error_description":"this org is locked"}"#,
            ProviderErrorKind::Authentication,
            "inactive_org: this org is locked",
        ),
    ];
    for (body, kind, fix) in cases {
        env.sim.inject(fault("POST", TOKEN, 400, Some(body)));
        let err = create(&client, &config, &escalation(&conv()))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{err}");
        assert_eq!(err.kind, kind, "{err}");
        assert!(err.message.contains(fix), "{err}");
        assert!(!err.message.contains("sim-client-secret"));
    }
    // Server trouble at the token endpoint is transient.
    env.sim.inject(fault("POST", TOKEN, 503, None));
    let err = create(&client, &config, &escalation(&conv()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    // Wrong secret, for real.
    let wrong = SalesforceConfig {
        client_secret: Secret::new("not-the-secret"),
        ..config.clone()
    };
    let err = create(&env.client(wrong.clone()), &wrong, &escalation(&conv()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Authentication);
    assert!(!err.message.contains("not-the-secret"));
    assert!(env.sim.salesforce_cases().is_empty());
    // Nothing was cached by the failures: the next call works.
    create(&client, &config, &escalation(&conv()))
        .await
        .unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn token_can_use_http_basic() {
    let env = env().await;
    let config = SalesforceConfig {
        token_auth_basic: true,
        ..env.config()
    };
    create(&env.client(config.clone()), &config, &escalation(&conv()))
        .await
        .unwrap();
    let token = &env.requests_to("POST", TOKEN)[0];
    assert!(!token.body.contains("client_id"), "{}", token.body);
    env.cleanup().await;
}

#[tokio::test]
async fn request_limit_is_transient_without_token_refresh() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    env.sim.inject(fault(
        "POST",
        CASES,
        403,
        Some(
            r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
        ),
    ));
    let e = escalation(&conv());
    let err = create(&client, &config, &e).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.kind, ProviderErrorKind::RateLimited);
    assert_eq!(err.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(env.sim.token_requests(), 1, "403 never refreshes the token");
    // The retry creates exactly one case.
    create(&client, &config, &e).await.unwrap();
    assert_eq!(env.sim.salesforce_cases().len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn lock_and_server_errors_are_transient() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    let e = escalation(&conv());
    env.sim.inject(fault(
        "POST",
        CASES,
        400,
        Some(r#"[{"message":"unable to obtain exclusive access to this record","errorCode":"UNABLE_TO_LOCK_ROW"}]"#),
    ));
    let err = create(&client, &config, &e).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.kind, ProviderErrorKind::Unavailable);
    env.sim.inject(fault("POST", CASES, 503, None));
    assert!(
        create(&client, &config, &e)
            .await
            .unwrap_err()
            .is_transient()
    );
    env.sim.inject(fault("POST", CASES, 500, None));
    assert!(
        create(&client, &config, &e)
            .await
            .unwrap_err()
            .is_transient()
    );
    create(&client, &config, &e).await.unwrap();
    assert_eq!(env.sim.salesforce_cases().len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn validation_errors_are_permanent_and_name_the_fields() {
    let env = env().await;
    let mut config = env.config();
    config.extra_fields = BTreeMap::from([("Bogus".to_string(), toml::Value::String("x".into()))]);
    let err = create(&env.client(config.clone()), &config, &escalation(&conv()))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.kind, ProviderErrorKind::Validation);
    assert!(err.message.contains("INVALID_FIELD"), "{err}");
    assert!(err.message.contains("fields: Bogus"), "{err}");

    let config = SalesforceConfig {
        origin: Some("Carrier pigeon".into()),
        ..env.config()
    };
    let err = create(&env.client(config.clone()), &config, &escalation(&conv()))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        "{err}"
    );
    assert!(err.message.contains("fields: Origin"), "{err}");

    // Messages that quote the value are not passed on (customer data).
    let config = env.config();
    env.sim.inject(fault(
        "POST",
        CASES,
        400,
        Some(r#"[{"message":"Subject: data value too large: Cannot log in...","errorCode":"STRING_TOO_LONG","fields":["Subject"]}]"#),
    ));
    let err = create(&env.client(config.clone()), &config, &escalation(&conv()))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("STRING_TOO_LONG"));
    assert!(!err.message.contains("Cannot log in"), "{err}");
    env.sim.inject(fault(
        "POST",
        CASES,
        400,
        Some(r#"[{"message":"Please check ada@example.com","errorCode":"FIELD_CUSTOM_VALIDATION_EXCEPTION","fields":[]}]"#),
    ));
    let err = create(&env.client(config.clone()), &config, &escalation(&conv()))
        .await
        .unwrap_err();
    assert!(err.message.contains("FIELD_CUSTOM_VALIDATION_EXCEPTION"));
    assert!(!err.message.contains("ada@example.com"), "{err}");
    assert!(env.sim.salesforce_cases().is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn upsert_creates_once_and_finds_the_case() {
    let env = env().await;
    let config = env.upsert_config();
    let client = env.client(config.clone());
    let c = conv();
    let e = escalation(&c);
    assert_eq!(find(&client, &config, &e).await.unwrap(), None);
    let first = create(&client, &config, &e).await.unwrap();
    // A replica that lost all state upserts again: same case.
    let other = store(&new_prefix()).await;
    let again = create(&env.client_with_store(config.clone(), &other), &config, &e)
        .await
        .unwrap();
    assert_eq!(first, again);
    let cases = env.sim.salesforce_cases();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].fields[EXT_FIELD], json!(c));
    let patches = env.requests_to("PATCH", &format!("{CASES}/{EXT_FIELD}/{c}"));
    assert_eq!(patches.len(), 2);
    let body: Value = serde_json::from_str(&patches[0].body).unwrap();
    assert!(
        body.get(EXT_FIELD).is_none(),
        "the External ID goes in the URL only"
    );
    // find_ticket from a replica without state: by SOQL on the External ID field.
    let other2 = store(&new_prefix()).await;
    let found = find(&env.client_with_store(config.clone(), &other2), &config, &e)
        .await
        .unwrap();
    assert_eq!(found, Some(first));
    for s in [other, other2] {
        s.delete_all().await.unwrap();
    }
    env.cleanup().await;
}

#[tokio::test]
async fn upsert_errors_are_permanent_and_explained() {
    let env = env().await;
    let config = env.upsert_config();
    let client = env.client(config.clone());
    let c = conv();
    env.sim.inject(FaultRule {
        content_type: Some("application/json;charset=UTF-8".into()),
        ..fault(
            "PATCH",
            &format!("{CASES}/{EXT_FIELD}/"),
            300,
            Some(r#"["/services/data/v62.0/sobjects/Case/500000000000011AAA","/services/data/v62.0/sobjects/Case/500000000000012AAA"]"#),
        )
    });
    let err = create(&client, &config, &escalation(&c)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{err}");
    assert!(
        err.message.contains("500000000000011AAA") && err.message.contains("500000000000012AAA"),
        "{err}"
    );

    let missing = SalesforceConfig {
        external_id_field: Some("No_Such_Field".into()),
        ..env.config()
    };
    let err = create(&env.client(missing.clone()), &missing, &escalation(&conv()))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{err}");
    assert_eq!(err.kind, ProviderErrorKind::Configuration);
    assert!(
        err.message
            .contains("No_Such_Field does not exist on Case or is not an External ID field"),
        "{err}"
    );
    assert!(env.sim.salesforce_cases().is_empty());
    env.cleanup().await;
}

async fn assert_one_full_transcript(env: &Env, e: &EscalationRequested, case_id: &str) {
    let cases = env.sim.salesforce_cases();
    assert_eq!(cases.len(), 1);
    let description = cases[0].fields["Description"].as_str().unwrap();
    assert!(description.encode_utf16().count() <= 32_000);
    assert!(
        description
            .trim_end()
            .ends_with(&format!("[escalator:{}]", e.conversation_id))
    );
    let files = env.records("ContentVersion");
    assert_eq!(files.len(), 1, "exactly one transcript file");
    let f = &files[0].fields;
    assert_eq!(f["FirstPublishLocationId"], case_id);
    assert_eq!(
        f["PathOnClient"],
        format!("transcript-{}.txt", e.conversation_id)
    );
    let data = base64::engine::general_purpose::STANDARD
        .decode(f["VersionData"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(data).unwrap(), transcript::plain(e, None));
}

#[tokio::test]
async fn long_transcript_is_cut_and_attached_once() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    let e = long_escalation(&conv(), 40_000);
    // The file is stored but the answer is lost: the create fails transiently...
    env.sim.inject(FaultRule {
        after_effect: true,
        ..fault("POST", CONTENT_VERSION, 503, None)
    });
    let err = create(&client, &config, &e).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // ...and its retry neither makes a second case nor a second file.
    let r = create(&client, &config, &e).await.unwrap();
    assert_one_full_transcript(&env, &e, &r.id).await;
    assert_eq!(env.requests_to("POST", &format!("{CASES}/")).len(), 1);
    // A crash-recovery lookup from a replica without state finishes nothing twice.
    let other = store(&new_prefix()).await;
    let found = find(&env.client_with_store(config.clone(), &other), &config, &e)
        .await
        .unwrap();
    assert_eq!(found.map(|f| f.id), Some(r.id.clone()));
    assert_one_full_transcript(&env, &e, &r.id).await;
    other.delete_all().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn long_transcript_with_upsert_is_attached_once() {
    let env = env().await;
    let config = env.upsert_config();
    let client = env.client(config.clone());
    let e = long_escalation(&conv(), 40_000);
    env.sim.inject(FaultRule {
        drop_connection: true,
        after_effect: true,
        ..fault("POST", CONTENT_VERSION, 503, None)
    });
    assert!(
        create(&client, &config, &e)
            .await
            .unwrap_err()
            .is_transient()
    );
    let other = store(&new_prefix()).await;
    let r = create(&env.client_with_store(config.clone(), &other), &config, &e)
        .await
        .unwrap();
    assert_one_full_transcript(&env, &e, &r.id).await;
    other.delete_all().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn guarded_create_survives_a_lost_answer() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    let c = conv();
    let e = escalation(&c);
    // Another conversation of the same customer with the same subject.
    let decoy = create(&client, &config, &escalation(&conv()))
        .await
        .unwrap();
    // Salesforce creates the case, the connection drops before the answer.
    env.sim.inject(FaultRule {
        drop_connection: true,
        after_effect: true,
        ..fault("POST", &format!("{CASES}/"), 503, None)
    });
    let err = create(&client, &config, &e).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(env.sim.salesforce_cases().len(), 2);

    // The pipeline's crash guard asks first: found by Subject + email + marker.
    let found = find(&client, &config, &e)
        .await
        .unwrap()
        .expect("the case of the lost answer");
    assert_ne!(found.id, decoy.id);
    let created = env.sim.salesforce_cases();
    assert_eq!(found.id, created[1].id);
    assert_eq!(
        found.number.as_deref(),
        Some(created[1].case_number.as_str())
    );
    // A retried create without asking resumes too.
    let again = create(&client, &config, &e).await.unwrap();
    assert_eq!(again, found);
    assert_eq!(env.sim.salesforce_cases().len(), 2);

    // Same with no state at all (another replica, Redis marker gone).
    let other = store(&new_prefix()).await;
    let found2 = find(&env.client_with_store(config.clone(), &other), &config, &e)
        .await
        .unwrap();
    assert_eq!(found2, Some(found));
    // Nothing created for an unknown conversation.
    assert_eq!(
        find(&client, &config, &escalation(&conv())).await.unwrap(),
        None
    );
    other.delete_all().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn guarded_create_retries_after_a_pending_failure() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    let e = escalation(&conv());
    // The create fails before Salesforce made anything.
    env.sim.inject(FaultRule {
        drop_connection: true,
        ..fault("POST", &format!("{CASES}/"), 503, None)
    });
    assert!(
        create(&client, &config, &e)
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(env.sim.salesforce_cases().is_empty());
    let r = create(&client, &config, &e).await.unwrap();
    assert_eq!(env.sim.salesforce_cases().len(), 1);
    assert_eq!(r.id, env.sim.salesforce_cases()[0].id);
    env.cleanup().await;
}

fn message(conv: &str, id: &str, text: String) -> CustomerMessage {
    CustomerMessage {
        org_id: ORG.into(),
        conversation_id: conv.into(),
        message_id: id.into(),
        text,
        sent_at: Utc::now(),
    }
}

#[tokio::test]
async fn customer_messages_become_case_comments_once() {
    let env = env().await;
    let config = env.config();
    let client = env.client(config.clone());
    let c = conv();
    let case = create(&client, &config, &escalation(&c)).await.unwrap();

    let m1 = message(&c, "m1", "Any news?".into());
    assert!(
        !client
            .has_customer_message(&case, &m1, chrono::Utc::now())
            .await
            .unwrap()
    );
    client.add_customer_message(&case, &m1).await.unwrap();
    assert!(
        client
            .has_customer_message(&case, &m1, chrono::Utc::now())
            .await
            .unwrap()
    );
    let comments = env.records("CaseComment");
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].fields["ParentId"], case.id);
    assert!(
        comments[0].fields["CommentBody"]
            .as_str()
            .unwrap()
            .ends_with("Any news?")
    );
    // Same text, another message: not mistaken for the first.
    let m2 = message(&c, "m2", "Any news?".into());
    assert!(
        !client
            .has_customer_message(&case, &m2, chrono::Utc::now())
            .await
            .unwrap()
    );

    // A long message is split; a crash after the first part is completed without duplicates.
    let m3 = message(&c, "m3", "w".repeat(9_000));
    env.sim.inject(FaultRule {
        after_effect: true,
        ..fault("POST", CASE_COMMENT, 503, None)
    });
    assert!(
        client
            .add_customer_message(&case, &m3)
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(
        !client
            .has_customer_message(&case, &m3, chrono::Utc::now())
            .await
            .unwrap()
    );
    client.add_customer_message(&case, &m3).await.unwrap();
    assert!(
        client
            .has_customer_message(&case, &m3, chrono::Utc::now())
            .await
            .unwrap()
    );
    let comments = env.records("CaseComment");
    assert_eq!(comments.len(), 4);
    let bodies: Vec<&str> = comments
        .iter()
        .map(|c| c.fields["CommentBody"].as_str().unwrap())
        .collect();
    assert!(bodies.iter().all(|b| b.encode_utf16().count() <= 4_000));
    assert!(bodies[1..].iter().all(|b| b.contains("part ")));
    assert_eq!(
        bodies[1..]
            .iter()
            .map(|b| b.matches('w').count())
            .sum::<usize>(),
        9_000
    );

    // Not a Salesforce id: permanent.
    let bad = ExternalRef {
        id: "nope".into(),
        ..case.clone()
    };
    let err = client.add_customer_message(&bad, &m1).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    env.cleanup().await;
}
