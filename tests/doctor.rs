//! `escalator doctor` against the simulator: a good set-up passes (exit 0);
//! each broken step fails on its own line with its fix (exit 1); `--json`
//! parses; and the doctor only reads (GETs and the token grant).
use escalator::config::Config;
use escalator::doctor::{self, DoctorOptions, Report, Status};
use escalator::sandbox::{SALESFORCE_ORG, Sandbox, ZENDESK_ORG, sandbox_config};
use escalator::sim::{self, FaultRule, SimHandle, SimSettings};
use serde_json::{Value, json};
use std::process::Command;

const WEBHOOK_URL: &str = "https://escalator.example.com/webhooks/zendesk";

async fn sim() -> SimHandle {
    let sim = sim::start("127.0.0.1:0".parse().unwrap(), SimSettings::default())
        .await
        .unwrap();
    sim.set_zendesk_webhook(Sandbox::zendesk_webhook(WEBHOOK_URL.to_string()));
    sim
}

/// The sandbox orgs, with a schedule and an External ID field, so that
/// those checks run too.
fn config_text(sim: &SimHandle) -> String {
    sandbox_config(&sim.base_url())
        .replace(
            "webhook_token =",
            "availability = { schedule_id = 1 }\nwebhook_token =",
        )
        .replace(
            "priority = \"Medium\"",
            "priority = \"Medium\"\nexternal_id_field = \"Escalator_Conversation_Id__c\"",
        )
}

async fn run(text: &str, org: Option<&str>, webhook_url: Option<&str>) -> Report {
    let config = Config::parse(text, "test", &|_| None).unwrap();
    let options = DoctorOptions {
        org: org.map(str::to_string),
        webhook_url: webhook_url.map(str::to_string),
    };
    doctor::run(&config, &options).await.unwrap()
}

fn line<'a>(report: &'a Report, step: &str) -> &'a doctor::Check {
    report
        .checks
        .iter()
        .find(|c| c.step == step)
        .unwrap_or_else(|| panic!("no check {step:?}:\n{}", report.to_text()))
}

fn only_reads(sim: &SimHandle) {
    for r in sim.requests() {
        assert!(
            r.method == "GET"
                || r.path.starts_with("/services/oauth2/token")
                || r.path
                    .starts_with("/iamessage/api/v2/authorization/unauthenticated/access-token"),
            "the doctor made a {} {}",
            r.method,
            r.path
        );
    }
    assert!(sim.zendesk_tickets().is_empty());
    assert!(sim.salesforce_cases().is_empty());
    assert!(sim.sunshine_users().is_empty());
    assert!(
        sim.miaw_conversations().is_empty(),
        "no messaging conversation"
    );
}

#[tokio::test]
async fn a_good_set_up_passes_every_check_and_only_reads() {
    let sim = sim().await;
    let report = run(&config_text(&sim), None, Some(WEBHOOK_URL)).await;
    let text = report.to_text();
    assert!(report.ok(), "{text}");
    assert_eq!(report.exit_code(), 0);
    for c in &report.checks {
        assert_eq!(c.status, Status::Pass, "{text}");
    }
    assert!(report.checks.iter().any(|c| c.step == "MIAW deployment"));
    // Both orgs, every step of both guides.
    assert!(report.checks.iter().any(|c| c.org == ZENDESK_ORG));
    assert!(report.checks.iter().any(|c| c.org == SALESFORCE_ORG));
    assert!(report.checks.len() >= 18, "{text}");
    only_reads(&sim);
    assert!(!text.contains("sim-zendesk-token") && !text.contains("sim-client-secret"));
    assert!(!text.contains("sim-sunshine-secret") && !text.contains("sandbox-webhook-token"));
}

/// One broken step: (fault, step that fails, words of its fix).
struct Broken {
    fault: FaultRule,
    step: &'static str,
    fix: &'static str,
}

fn status(method: &str, path: &str, status: u16) -> FaultRule {
    FaultRule {
        method: Some(method.into()),
        path_prefix: path.into(),
        status: Some(status),
        ..Default::default()
    }
}

fn answer(path: &str, body: Value) -> FaultRule {
    FaultRule {
        method: Some("GET".into()),
        path_prefix: path.into(),
        status: Some(200),
        body: Some(body.to_string()),
        ..Default::default()
    }
}

fn webhooks_with(change: impl Fn(&mut Value)) -> FaultRule {
    let mut hook = json!({
        "id": "01HWEBHOOK", "name": "Fullview", "status": "active",
        "endpoint": WEBHOOK_URL, "http_method": "POST", "request_format": "json",
        "subscriptions": [
            "zen:event-type:ticket.status_changed",
            "zen:event-type:ticket.agent_assignment_changed",
            "zen:event-type:messaging_ticket.message_added"
        ],
        "authentication": {"type": "bearer_token", "add_position": "header"},
        "custom_headers": {"fv-organisation-id": ZENDESK_ORG}
    });
    change(&mut hook);
    answer("/api/v2/webhooks", json!({"webhooks": [hook]}))
}

fn token_refusal(error: &str, description: &str) -> FaultRule {
    FaultRule {
        method: Some("POST".into()),
        path_prefix: "/services/oauth2/token".into(),
        status: Some(400),
        body: Some(json!({"error": error, "error_description": description}).to_string()),
        ..Default::default()
    }
}

fn broken_steps() -> Vec<Broken> {
    vec![
        Broken {
            fault: status(
                "POST",
                "/iamessage/api/v2/authorization/unauthenticated/access-token",
                400,
            ),
            step: "MIAW deployment",
            fix: "code snippet",
        },
        Broken {
            fault: status("GET", "/embeddedservice/v1/businesshours", 404),
            step: "MIAW business hours",
            fix: "`salesforce.live.scrt_url`",
        },
        Broken {
            fault: status("GET", "/api/v2/users/me", 401),
            step: "API token authentication",
            fix: "check `email`",
        },
        Broken {
            fault: status("GET", "/api/v2/groups/77", 404),
            step: "default group",
            fix: "set `group_id`",
        },
        Broken {
            fault: answer(
                "/api/v2/users/1000",
                json!({"user": {"id": 1000, "role": "end-user"}}),
            ),
            step: "default assignee",
            fix: "an agent's user id",
        },
        Broken {
            fault: status("GET", "/sc/v2/apps/sim-app", 401),
            step: "Conversations API key",
            fix: "`zendesk.live.key_id` and `zendesk.live.secret`",
        },
        Broken {
            fault: status("GET", "/sc/v2/apps/sim-app", 404),
            step: "Conversations API key",
            fix: "`zendesk.live.app_id`",
        },
        Broken {
            fault: status("GET", "/api/v2/business_hours/schedules/1", 404),
            step: "availability policy",
            fix: "Schedules",
        },
        Broken {
            fault: answer("/api/v2/webhooks", json!({"webhooks": []})),
            step: "webhook exists",
            fix: "create the webhook",
        },
        Broken {
            fault: webhooks_with(|w| w["status"] = json!("inactive")),
            step: "webhook active",
            fix: "activate the webhook",
        },
        Broken {
            fault: webhooks_with(|w| w["endpoint"] = json!("https://old.example.com/hook")),
            step: "webhook URL",
            fix: WEBHOOK_URL,
        },
        Broken {
            fault: webhooks_with(|w| {
                w["subscriptions"] = json!(["zen:event-type:ticket.status_changed"])
            }),
            step: "webhook events",
            fix: "Message added",
        },
        Broken {
            fault: webhooks_with(|w| w["authentication"] = Value::Null),
            step: "webhook authentication",
            fix: "Bearer token",
        },
        Broken {
            fault: webhooks_with(|w| w["custom_headers"] = json!({})),
            step: "webhook fv-organisation-id header",
            fix: "add the custom header fv-organisation-id",
        },
        Broken {
            fault: token_refusal("invalid_client", "invalid client credentials"),
            step: "token grant (client credentials)",
            fix: "consumer key and consumer secret",
        },
        Broken {
            fault: token_refusal("invalid_grant", "request not supported on this domain"),
            step: "token grant (client credentials)",
            fix: "My Domain host",
        },
        Broken {
            fault: token_refusal("invalid_grant", "no client credentials user enabled"),
            step: "token grant (client credentials)",
            fix: "Run As user",
        },
        Broken {
            fault: token_refusal("unsupported_grant_type", "grant type not supported"),
            step: "token grant (client credentials)",
            fix: "enable the client credentials flow",
        },
        // The first read under /services/data/ is the version list.
        Broken {
            fault: FaultRule {
                times: Some(1),
                ..answer(
                    "/services/data/",
                    json!([{"version": "58.0", "url": "/services/data/v58.0"}]),
                )
            },
            step: "API version",
            fix: "\"v58.0\"",
        },
        Broken {
            fault: answer(
                "/services/data/v62.0/sobjects/Case/describe",
                json!({"name": "Case", "createable": false, "fields": [{"name": "Escalator_Conversation_Id__c", "externalId": true}]}),
            ),
            step: "Case createable by the Run As user",
            fix: "Create (and Edit) on Case",
        },
        Broken {
            fault: answer(
                "/services/data/v62.0/sobjects/Case/describe",
                json!({"name": "Case", "createable": true, "fields": []}),
            ),
            step: "External ID field",
            fix: "create the text field Escalator_Conversation_Id__c",
        },
    ]
}

#[tokio::test]
async fn each_broken_step_fails_on_its_line_with_its_fix() {
    let sim = sim().await;
    let text = config_text(&sim);
    for b in broken_steps() {
        sim.clear_faults();
        sim.inject(b.fault.clone());
        let report = run(&text, None, Some(WEBHOOK_URL)).await;
        let out = report.to_text();
        assert_eq!(report.exit_code(), 1, "{}: {out}", b.step);
        let c = line(&report, b.step);
        assert_eq!(c.status, Status::Fail, "{}: {out}", b.step);
        let fix = c.fix.as_deref().unwrap_or_default();
        assert!(fix.contains(b.fix), "{}: fix {fix:?}", b.step);
        // Every other failure is a consequence (skipped), not a second FAIL.
        let fails: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.step.as_str())
            .collect();
        assert_eq!(fails, vec![b.step], "{out}");
    }
    only_reads(&sim);
}

#[tokio::test]
async fn agents_online_needs_the_availability_api() {
    let sim = sim().await;
    let text = config_text(&sim)
        .replace("schedule_id = 1 }", "}")
        .replace("availability = { }", "availability = \"agents_online\"");
    assert!(run(&text, Some(ZENDESK_ORG), Some(WEBHOOK_URL)).await.ok());
    sim.set_agent_availability_api(false);
    let report = run(&text, Some(ZENDESK_ORG), Some(WEBHOOK_URL)).await;
    let c = line(&report, "availability policy");
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.fix
            .as_deref()
            .unwrap_or_default()
            .contains("omnichannel routing")
    );
}

#[tokio::test]
async fn unknowable_or_optional_steps_warn_without_failing() {
    let sim = sim().await;
    let mut target = Sandbox::zendesk_webhook(WEBHOOK_URL.to_string());
    target.session_end_trigger = false;
    sim.set_zendesk_webhook(target);
    let report = run(&config_text(&sim), Some(ZENDESK_ORG), None).await;
    assert!(report.ok(), "{}", report.to_text());
    let url = line(&report, "webhook URL");
    assert_eq!(url.status, Status::Warn);
    assert!(
        url.fix
            .as_deref()
            .unwrap_or_default()
            .contains("--webhook-url")
    );
    let trigger = line(&report, "session-end trigger (optional)");
    assert_eq!(trigger.status, Status::Warn);
    assert!(
        trigger
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("fv:conversation_closed")
    );
    // A non-agent API user is worth a warning, not a failure.
    sim.inject(answer(
        "/api/v2/users/me",
        json!({"user": {"id": 5, "role": "end-user"}}),
    ));
    let report = run(&config_text(&sim), Some(ZENDESK_ORG), Some(WEBHOOK_URL)).await;
    assert_eq!(
        line(&report, "API token authentication").status,
        Status::Warn
    );
}

#[tokio::test]
async fn an_end_user_token_and_a_run_as_user_without_case_access_are_named() {
    let sim = sim().await;
    sim.set_api_user_role("end-user");
    sim.set_case_createable(false);
    let report = run(&config_text(&sim), None, Some(WEBHOOK_URL)).await;
    assert_eq!(report.exit_code(), 1);
    let auth = line(&report, "API token authentication");
    assert_eq!(auth.status, Status::Warn);
    assert!(
        auth.fix
            .as_deref()
            .unwrap_or_default()
            .contains("agent or admin")
    );
    // The default assignee (user 1000) is that end user.
    assert_eq!(line(&report, "default assignee").status, Status::Fail);
    let case = line(&report, "Case createable by the Run As user");
    assert_eq!(case.status, Status::Fail);
    assert!(
        case.fix
            .as_deref()
            .unwrap_or_default()
            .contains("Create (and Edit) on Case")
    );
    only_reads(&sim);
}

#[tokio::test]
async fn the_webhook_is_found_on_a_later_page() {
    let sim = sim().await;
    let other = json!({"id": "01HOTHER", "status": "active", "endpoint": "https://other.example.com",
        "http_method": "POST", "request_format": "json", "subscriptions": ["conditional_ticket_events"],
        "authentication": null, "custom_headers": {}});
    let next = format!("{}/api/v2/webhooks?page[after]=abc", sim.base_url());
    sim.inject(FaultRule {
        times: Some(1),
        ..answer(
            "/api/v2/webhooks",
            json!({"webhooks": [other], "meta": {"has_more": true}, "links": {"next": next}}),
        )
    });
    let report = run(&config_text(&sim), Some(ZENDESK_ORG), Some(WEBHOOK_URL)).await;
    assert!(report.ok(), "{}", report.to_text());
    assert!(
        line(&report, "webhook exists")
            .detail
            .contains("01HZSIMEVENTWEBHOOK")
    );
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.path.contains("page[after]=abc")),
        "the second page was not read"
    );
}

#[tokio::test]
async fn the_grant_with_http_basic_credentials_passes_too() {
    let sim = sim().await;
    let text = config_text(&sim).replace(
        "priority = \"Medium\"",
        "priority = \"Medium\"\ntoken_auth_basic = true",
    );
    let report = run(&text, Some(SALESFORCE_ORG), None).await;
    assert!(report.ok(), "{}", report.to_text());
    let grant = sim
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/services/oauth2/token"))
        .unwrap();
    assert!(!grant.body.contains("client_secret"), "{}", grant.body);
}

#[tokio::test]
async fn the_switches_are_on_the_control_api_too() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "/_sim/salesforce/case-createable",
            json!({"createable": false}),
        ),
        ("/_sim/zendesk/api-user-role", json!({"role": "end-user"})),
    ] {
        let resp = http
            .post(format!("{}{path}", sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let report = run(&config_text(&sim), None, Some(WEBHOOK_URL)).await;
    assert_eq!(
        line(&report, "Case createable by the Run As user").status,
        Status::Fail
    );
    assert_eq!(
        line(&report, "API token authentication").status,
        Status::Warn
    );
}

fn binary(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("doctor")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("ESCALATOR_PUBLIC_WEBHOOK_URL")
        .env_remove("ESCALATOR_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_command_prints_lines_json_and_exit_codes() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("escalator.toml");
    std::fs::write(&path, config_text(&sim)).unwrap();
    let path2 = path.clone();
    let ok = tokio::task::spawn_blocking(move || binary(&path2, &["--webhook-url", WEBHOOK_URL]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PASS") && l.contains("webhook URL")),
        "{stdout}"
    );

    sim.inject(status("GET", "/api/v2/groups/77", 404));
    let path2 = path.clone();
    let failed = tokio::task::spawn_blocking(move || {
        binary(
            &path2,
            &["--json", "--org", ZENDESK_ORG, "--webhook-url", WEBHOOK_URL],
        )
    })
    .await
    .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let checks: Vec<Value> = String::from_utf8_lossy(&failed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(checks.iter().all(|c| c["org"] == ZENDESK_ORG));
    let group = checks
        .iter()
        .find(|c| c["step"] == "default group")
        .unwrap();
    assert_eq!(group["status"], "FAIL");
    assert!(group["fix"].as_str().unwrap().contains("group_id"));

    // Text: the failure and its fix on one line.
    let path2 = path.clone();
    let text = tokio::task::spawn_blocking(move || {
        binary(
            &path2,
            &["--org", ZENDESK_ORG, "--webhook-url", WEBHOOK_URL],
        )
    })
    .await
    .unwrap();
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let fail = stdout
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        fail.contains("default group") && fail.contains("fix: set `group_id`"),
        "{fail}"
    );

    let path2 = path.clone();
    let unknown = tokio::task::spawn_blocking(move || binary(&path2, &["--org", "nope"]))
        .await
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    let missing = dir.path().join("missing.toml");
    let bad = tokio::task::spawn_blocking(move || binary(&missing, &[]))
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    only_reads(&sim);
}
