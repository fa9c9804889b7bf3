//! End to end on the Zendesk live path: an escalation with mode `live` is
//! handed over through Sunshine Conversations (the simulator), the agent's
//! side comes back as Zendesk webhooks the simulator delivers over HTTP to
//! the real ingress, and everything the widget hears is checked in order.
//! Real RabbitMQ and Redis throughout.
mod common;

use common::*;
use escalator::contract::{
    ClosedBy, ExternalKind, FallbackReason, Mode, OutboundEvent, OutboundPayload,
};
use escalator::sandbox::{Listener, Sandbox, ZENDESK_ORG, sandbox_config};
use escalator::sim::{FaultRule, SimHandle, SimSchedule, SimSunshineConversation};
use serde_json::{Value, json};
use std::time::Duration;

const ORG: &str = ZENDESK_ORG;

fn live_escalation(conv: &str) -> Value {
    let mut body = escalation(ORG, conv);
    body["mode"] = json!("live");
    body["customer"]["id"] = json!(format!("cust-{conv}"));
    body
}

async fn live_sandbox(env: &TestEnv) -> Sandbox {
    env.sandbox()
        .await
        .with_ingress(Sandbox::zendesk_webhook)
        .await
        .unwrap()
}

/// The simulator's Sunshine conversation with this id.
fn conversation(sim: &SimHandle, id: &str) -> SimSunshineConversation {
    sim.sunshine_conversations()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no Sunshine conversation {id}"))
}

/// Sunshine conversations the simulator holds for our conversation `conv`.
fn conversations_of(sim: &SimHandle, conv: &str) -> Vec<SimSunshineConversation> {
    sim.sunshine_conversations()
        .into_iter()
        .filter(|c| c.metadata["escalator_conversation_id"] == conv)
        .collect()
}

/// Escalate `conv` live and return the Sunshine conversation id, checking
/// `escalation.created` (live) then `escalation.queued`.
async fn hand_over(
    sb: &Sandbox,
    widget: &mut Listener,
    conv: &str,
) -> (String, Vec<OutboundEvent>) {
    sb.publish(
        "escalation.requested",
        &format!("{conv}-esc"),
        &live_escalation(conv),
    )
    .await
    .unwrap();
    let created_event = next_event(widget, conv).await;
    let c = created(&created_event).clone();
    assert_eq!(c.mode, Mode::Live, "{created_event:?}");
    assert_eq!(c.external_kind, ExternalKind::SunshineConversation);
    assert!(c.fallback_reason.is_none());
    let queued = next_event(widget, conv).await;
    assert!(
        matches!(queued.payload, OutboundPayload::EscalationQueued(_)),
        "{queued:?}"
    );
    (c.external_id, vec![created_event, queued])
}

fn assert_seqs_increase(events: &[OutboundEvent]) {
    for pair in events.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "seqs must increase one by one: {:?}",
            events
                .iter()
                .map(|e| (e.seq, e.payload.event_type()))
                .collect::<Vec<_>>()
        );
    }
}

/// Every request body the worker sent to Sunshine (as the simulator
/// recorded it) validates against the official spec.
fn assert_sunshine_requests_match_the_spec(sim: &SimHandle) {
    if openapi::spec().is_none() {
        return;
    }
    let mut validators = std::collections::HashMap::new();
    let mut checked = 0;
    for r in sim.requests() {
        if r.method == "GET" || !r.path.starts_with("/sc/") {
            continue;
        }
        let op = openapi::operation(&r.method, &r.path)
            .unwrap_or_else(|| panic!("unexpected Sunshine call {} {}", r.method, r.path));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        let errors = openapi::request_errors(&mut validators, op, &body);
        assert!(errors.is_empty(), "{} {}: {errors:?}", r.method, r.path);
        checked += 1;
    }
    // User, conversation, header + two transcript lines, passControl, the customer's message.
    assert!(checked >= 6, "only {checked} Sunshine bodies checked");
}

fn all_ok(statuses: &[u16]) {
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| (200..300).contains(s)),
        "the ingress must accept every delivery: {statuses:?}"
    );
}

/// Wait until the worker has handled the webhook event `event_id` of `conv`.
async fn until_handled(env: &TestEnv, conv: &str, event_id: &str) {
    until_done(env, ORG, conv, &format!("zendesk-event:{event_id}")).await;
}

/// Nothing more for `conv` is on the widget's queue (call after the
/// worker is known to have handled everything that could have caused one).
async fn assert_quiet(widget: &mut Listener, conv: &str) {
    while let Some(e) = widget.next(Duration::from_millis(300)).await {
        assert_ne!(e.conversation_id, conv, "unexpected event {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_live_flow_reaches_the_widget_in_order() {
    let env = TestEnv::new("live-flow").await;
    let sb = live_sandbox(&env).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let conv = "live-flow";
    let (sc, mut events) = hand_over(&sb, &mut widget, conv).await;

    // The hand-over: one user, one conversation with the transcript, one
    // passControl that made a messaging ticket with the whole transcript.
    let c = conversation(&sb.sim, &sc);
    assert_eq!(c.pass_control_count, 1);
    assert!(c.transcript_from_first_message_id && c.whole_transcript);
    let texts: Vec<&str> = c
        .messages
        .iter()
        .filter_map(|m| m.text.as_deref())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("I can't log in")),
        "customer line: {texts:?}"
    );
    let meta = &c.pass_control_metadata[0];
    let tags = meta["dataCapture.systemField.tags"].as_str().unwrap();
    assert!(
        tags.contains("escalator") && tags.contains("esc_"),
        "{tags}"
    );
    assert_eq!(
        meta["dataCapture.systemField.requester.email"],
        "grace@example.com"
    );
    let ticket_id = c.ticket_id.expect("passControl makes a messaging ticket");

    // The agent joins and replies; the widget hears both, the first with the ticket.
    all_ok(&sb.sim.agent_joins(&sc, 9001).await.unwrap());
    let joined = next_event(&mut widget, conv).await;
    match &joined.payload {
        OutboundPayload::AgentJoined(j) => {
            assert_eq!(j.display_name, "Alex Agent");
            let t = j
                .ticket
                .as_ref()
                .expect("the first agent event names the ticket");
            assert_eq!(t.id, ticket_id.to_string());
            assert_eq!(
                t.url,
                format!("https://sandbox.zendesk.com/agent/tickets/{ticket_id}")
            );
        }
        other => panic!("expected agent.joined, got {other:?}"),
    }
    events.push(joined);
    all_ok(
        &sb.sim
            .agent_replies(&sc, "Hi Grace, I'm Alex.")
            .await
            .unwrap(),
    );
    let reply = next_event(&mut widget, conv).await;
    match &reply.payload {
        OutboundPayload::AgentMessage(m) => {
            assert_eq!(m.text, "Hi Grace, I'm Alex.");
            assert_eq!(m.display_name.as_deref(), Some("Alex Agent"));
            assert!(m.ticket.is_none(), "the ticket is announced once");
        }
        other => panic!("expected agent.message, got {other:?}"),
    }
    events.push(reply);

    // The customer writes: the message reaches the agent once, as the user.
    sb.publish(
        "customer.message",
        "live-flow-m1",
        &customer_message(ORG, conv, "live-flow-m1", "Thanks, it is urgent."),
    )
    .await
    .unwrap();
    until_sim(&sb.sim, || {
        conversation(&sb.sim, &sc)
            .messages
            .iter()
            .any(|m| m.metadata["escalator_message_id"] == "live-flow-m1")
    })
    .await;
    let posted: Vec<_> = conversation(&sb.sim, &sc)
        .messages
        .into_iter()
        .filter(|m| m.metadata["escalator_message_id"] == "live-flow-m1")
        .collect();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].author_type, "user");
    assert_eq!(posted[0].text.as_deref(), Some("Thanks, it is urgent."));

    // The agent ends the session (the admins' trigger, trailing comma and
    // all): the widget hears the close next, so the customer's own message
    // (echoed by Zendesk as an end-user message_added) was not sent back.
    all_ok(&sb.sim.end_session(&sc).await.unwrap());
    let closed = next_event(&mut widget, conv).await;
    match &closed.payload {
        OutboundPayload::ConversationClosed(c) => assert_eq!(c.closed_by, ClosedBy::Agent),
        other => panic!("expected conversation.closed, got {other:?}"),
    }
    events.push(closed);
    assert_seqs_increase(&events);
    assert_eq!(events[0].seq, 1);
    assert_sunshine_requests_match_the_spec(&sb.sim);

    // After the end nothing more is relayed, either way.
    sb.publish(
        "customer.message",
        "live-flow-m2",
        &customer_message(ORG, conv, "live-flow-m2", "Hello?"),
    )
    .await
    .unwrap();
    let deliveries = sb.sim.agent_replies(&sc, "late reply").await.unwrap();
    all_ok(&deliveries);
    let late = sb
        .sim
        .webhook_deliveries()
        .into_iter()
        .rev()
        .find(|d| d.event_type.ends_with("message_added"))
        .unwrap();
    until_handled(&env, conv, &late.event_id).await;
    assert_quiet(&mut widget, conv).await;
    assert!(
        !conversation(&sb.sim, &sc)
            .messages
            .iter()
            .any(|m| m.metadata["escalator_message_id"] == "live-flow-m2"),
        "a message after the end is not relayed"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_at_any_hand_over_step_is_resumed_without_duplicates() {
    let env = TestEnv::new("live-lost").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let steps: [(&str, &str, Option<&str>); 4] = [
        ("user", "/sc/v2/apps/sim-app/users", None),
        ("conversation", "/sc/v2/apps/sim-app/conversations", None),
        (
            "transcript message",
            "/sc/v2/apps/sim-app/conversations/",
            Some("/messages"),
        ),
        (
            "passControl",
            "/sc/v2/apps/sim-app/conversations/",
            Some("/passControl"),
        ),
    ];
    for (i, (step, prefix, contains)) in steps.into_iter().enumerate() {
        let conv = format!("live-lost-{i}");
        // The simulator does the step, then the connection drops: the
        // escalator cannot know whether it happened.
        sb.sim.inject(FaultRule {
            method: Some("POST".into()),
            path_prefix: prefix.into(),
            path_contains: contains.map(str::to_string),
            times: Some(1),
            drop_connection: true,
            after_effect: true,
            ..FaultRule::default()
        });
        let (sc, _) = hand_over(&sb, &mut widget, &conv).await;
        let users: Vec<_> = sb
            .sim
            .sunshine_users()
            .into_iter()
            .filter(|u| u.external_id.as_deref() == Some(&format!("cust-{conv}")))
            .collect();
        assert_eq!(users.len(), 1, "{step}: one user");
        let convs = conversations_of(&sb.sim, &conv);
        assert_eq!(convs.len(), 1, "{step}: one conversation");
        let c = &convs[0];
        assert_eq!(c.id, sc);
        let mut ids: Vec<&str> = c
            .messages
            .iter()
            .filter_map(|m| m.metadata["escalator_message_id"].as_str())
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            all,
            "{step}: one copy of each transcript message"
        );
        assert!(all >= 2, "{step}: the transcript is there: {ids:?}");
        assert_eq!(c.pass_control_count, 1, "{step}: one passControl");
        assert_eq!(c.ticket_ids.len(), 1, "{step}: one ticket");
        assert!(
            c.whole_transcript,
            "{step}: the ticket has the whole transcript"
        );
    }
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_reordered_webhooks_change_nothing_twice() {
    let env = TestEnv::new("live-order").await;
    let sb = live_sandbox(&env).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let conv = "live-order";
    let (sc, mut events) = hand_over(&sb, &mut widget, conv).await;
    all_ok(&sb.sim.agent_joins(&sc, 9001).await.unwrap());
    events.push(next_event(&mut widget, conv).await);

    // Zendesk delivers the reply twice: the widget hears it once.
    sb.sim.duplicate_next(1);
    all_ok(
        &sb.sim
            .agent_replies(&sc, "One moment please.")
            .await
            .unwrap(),
    );
    let reply = next_event(&mut widget, conv).await;
    assert!(
        matches!(reply.payload, OutboundPayload::AgentMessage(_)),
        "{reply:?}"
    );
    events.push(reply);

    // A transfer delivered newest first: Sam's assignment, then Alex's
    // older unassignment, which must not undo it.
    sb.sim.hold_deliveries();
    sb.sim.agent_leaves(&sc).await.unwrap();
    sb.sim.agent_joins(&sc, 9002).await.unwrap();
    all_ok(&sb.sim.release_held(true).await.unwrap());
    let left = next_event(&mut widget, conv).await;
    assert!(
        matches!(&left.payload, OutboundPayload::AgentLeft(l) if l.display_name.as_deref() == Some("Alex Agent")),
        "{left:?}"
    );
    let joined = next_event(&mut widget, conv).await;
    assert!(
        matches!(&joined.payload, OutboundPayload::AgentJoined(j) if j.display_name == "Sam Support"),
        "{joined:?}"
    );
    events.extend([left, joined]);

    // Solved, then late and repeated deliveries: closed once, never reopened.
    sb.sim.duplicate_next(1);
    all_ok(&sb.sim.solve_ticket(&sc).await.unwrap());
    let closed = next_event(&mut widget, conv).await;
    assert!(
        matches!(&closed.payload, OutboundPayload::ConversationClosed(c) if c.closed_by == ClosedBy::Agent),
        "{closed:?}"
    );
    events.push(closed);
    all_ok(&sb.sim.agent_joins(&sc, 9001).await.unwrap());
    let last = sb.sim.webhook_deliveries().into_iter().last().unwrap();
    until_handled(&env, conv, &last.event_id).await;
    assert_quiet(&mut widget, conv).await;
    assert_seqs_increase(&events);

    // Nothing was dead-lettered on the way.
    assert_eq!(
        env.queue_depth(escalator::topology::DEAD_LETTER_QUEUE)
            .await,
        0
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_tickets_that_are_not_ours_are_ignored_cheaply() {
    let env = TestEnv::new("live-unrelated").await;
    let sb = live_sandbox(&env).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    // One of ours, so that the indexes are not empty.
    let (sc, _) = hand_over(&sb, &mut widget, "live-ours").await;
    let before = sb.sim.requests().len();
    for _ in 0..3 {
        all_ok(&sb.sim.unrelated_ticket_event().await.unwrap());
    }
    let ctx = sb.worker.context().clone();
    // The ingress answered each after the broker confirmed: the intake
    // router sees all three.
    let deadline = tokio::time::Instant::now() + WAIT;
    while ctx.webhooks.ignored() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unrelated events not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ctx.webhooks.ignored() >= 3, "{}", ctx.webhooks.ignored());
    assert_eq!(ctx.webhooks.resolved(), 0);
    // No provider call was made for them, and nothing was dead-lettered.
    assert_eq!(sb.sim.requests().len(), before, "no provider call");
    assert_eq!(
        env.queue_depth(escalator::topology::DEAD_LETTER_QUEUE)
            .await,
        0
    );
    // Ours still resolve.
    all_ok(&sb.sim.agent_joins(&sc, 9001).await.unwrap());
    let joined = next_event(&mut widget, "live-ours").await;
    assert!(
        matches!(joined.payload, OutboundPayload::AgentJoined(_)),
        "{joined:?}"
    );
    assert!(ctx.webhooks.resolved() >= 1);
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_to_take_the_chat_makes_a_ticket_that_says_why() {
    let env = TestEnv::new("live-fallback").await;
    let config = |sim: &str| {
        let base = sandbox_config(sim);
        format!(
            "{base}
[orgs.closed]
provider = \"zendesk\"
[orgs.closed.zendesk]
subdomain = \"closed\"
email = \"agent@example.com\"
api_token = \"sim-zendesk-token\"
base_url = \"{sim}\"
[orgs.closed.zendesk.live]
app_id = \"sim-app\"
key_id = \"sim-key\"
secret = \"sim-sunshine-secret\"
base_url = \"{sim}/sc\"
webhook_token = \"closed-webhook-token-0123456789\"
availability = {{ schedule_id = 7 }}

[orgs.nobody]
provider = \"zendesk\"
[orgs.nobody.zendesk]
subdomain = \"nobody\"
email = \"agent@example.com\"
api_token = \"sim-zendesk-token\"
base_url = \"{sim}\"
[orgs.nobody.zendesk.live]
app_id = \"sim-app\"
key_id = \"sim-key\"
secret = \"sim-sunshine-secret\"
base_url = \"{sim}/sc\"
webhook_token = \"nobody-webhook-token-0123456789\"
availability = \"agents_online\"
"
        )
    };
    let sb = env.sandbox_with(env.settings.clone(), config).await;
    sb.sim.set_schedule(SimSchedule::always_closed(7));
    for (org, reason) in [
        ("closed", FallbackReason::OutsideBusinessHours),
        ("nobody", FallbackReason::NoAgentOnline),
    ] {
        let mut widget = sb.listen(&format!("{org}.#")).await.unwrap();
        let conv = format!("fallback-{org}");
        let mut body = escalation(org, &conv);
        body["mode"] = json!("live");
        sb.publish("escalation.requested", &format!("{conv}-esc"), &body)
            .await
            .unwrap();
        let e = next_event(&mut widget, &conv).await;
        let c = created(&e);
        assert_eq!(c.mode, Mode::Ticket, "{org}");
        assert_eq!(c.external_kind, ExternalKind::ZendeskTicket, "{org}");
        assert_eq!(c.fallback_reason, Some(reason), "{org}");
        assert!(
            conversations_of(&sb.sim, &conv).is_empty(),
            "{org}: no hand-over"
        );
        let ticket = sb
            .sim
            .zendesk_tickets()
            .into_iter()
            .find(|t| t.external_id.as_deref() == Some(conv.as_str()))
            .unwrap();
        let html = ticket.comments[0].html_body.clone().unwrap_or_default();
        assert!(
            html.contains(reason.sentence()),
            "{org}: the agent reads why: {html}"
        );
    }
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_refused_half_way_falls_back_to_a_ticket_with_the_transcript() {
    let env = TestEnv::new("live-refused").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/sc/v2/apps/sim-app/conversations/".into(),
        path_contains: Some("/passControl".into()),
        status: Some(400),
        times: Some(1),
        ..FaultRule::default()
    });
    let conv = "live-refused";
    sb.publish(
        "escalation.requested",
        "live-refused-esc",
        &live_escalation(conv),
    )
    .await
    .unwrap();
    let e = next_event(&mut widget, conv).await;
    let c = created(&e);
    assert_eq!(c.mode, Mode::Ticket);
    assert_eq!(c.fallback_reason, Some(FallbackReason::HandoverFailed));
    let ticket = sb
        .sim
        .zendesk_tickets()
        .into_iter()
        .find(|t| t.external_id.as_deref() == Some(conv))
        .expect("the fallback ticket");
    let html = ticket.comments[0].html_body.clone().unwrap_or_default();
    assert!(
        html.contains("I can&#39;t log in") || html.contains("I can't log in"),
        "{html}"
    );
    // A later customer message goes to that ticket.
    sb.publish(
        "customer.message",
        "live-refused-m1",
        &customer_message(ORG, conv, "live-refused-m1", "Still there?"),
    )
    .await
    .unwrap();
    until_sim(&sb.sim, || {
        sb.sim
            .zendesk_tickets()
            .iter()
            .any(|t| t.external_id.as_deref() == Some(conv) && t.comments.len() == 2)
    })
    .await;
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_leaving_tells_the_agent_and_closes_the_chat() {
    let env = TestEnv::new("live-leave").await;
    let sb = live_sandbox(&env).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let conv = "live-leave";
    let (sc, _) = hand_over(&sb, &mut widget, conv).await;
    sb.publish(
        "customer.ended",
        "live-leave-end",
        &json!({"org_id": ORG, "conversation_id": conv, "ended_at": "2026-11-21T10:05:00Z"}),
    )
    .await
    .unwrap();
    let closed = next_event(&mut widget, conv).await;
    assert!(
        matches!(&closed.payload, OutboundPayload::ConversationClosed(c) if c.closed_by == ClosedBy::Customer),
        "{closed:?}"
    );
    let notices: Vec<_> = conversation(&sb.sim, &sc)
        .messages
        .into_iter()
        .filter(|m| {
            m.author_type == "business" && m.metadata["escalator_message_id"] == "customer-left"
        })
        .collect();
    assert_eq!(notices.len(), 1, "the agent is told once");
    // A repeat of the event changes nothing.
    sb.publish(
        "customer.ended",
        "live-leave-end-2",
        &json!({"org_id": ORG, "conversation_id": conv, "ended_at": "2026-11-21T10:05:01Z"}),
    )
    .await
    .unwrap();
    all_ok(&sb.sim.agent_replies(&sc, "Bye").await.unwrap());
    let last = sb.sim.webhook_deliveries().into_iter().last().unwrap();
    until_handled(&env, conv, &last.event_id).await;
    assert_quiet(&mut widget, conv).await;
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_pass_control_is_resumed_by_another_without_a_second_one() {
    let env = TestEnv::new("live-kill").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let client = escalator::sandbox::Client::connect(&env.settings)
        .await
        .unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    // Zendesk takes the hand-over, then its answer takes a minute: the
    // worker is killed while it waits, before it records anything.
    sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/sc/v2/apps/sim-app/conversations/".into(),
        path_contains: Some("/passControl".into()),
        times: Some(1),
        latency_ms: Some(60_000),
        after_effect: true,
        ..FaultRule::default()
    });
    let short = [
        ("ESCALATOR_HTTP_TIMEOUT_MS", "5000"),
        ("ESCALATOR_LEASE_TTL_MS", "6000"),
    ];
    let config = sandbox_config(&sim.base_url());
    let first = env.spawn_worker_env(&config, dir.path(), "first", &short);
    let conv = "live-kill";
    client
        .publish(
            "escalation.requested",
            "live-kill-esc",
            &live_escalation(conv),
        )
        .await
        .unwrap();
    until_sim(&sim, || {
        conversations_of(&sim, conv)
            .first()
            .is_some_and(|c| c.pass_control_count == 1)
    })
    .await;
    first.kill9().await;

    let second = env.spawn_worker_env(&config, dir.path(), "second", &short);
    let e = next_event(&mut widget, conv).await;
    let c = created(&e);
    assert_eq!(c.mode, Mode::Live, "{e:?}");
    let queued = next_event(&mut widget, conv).await;
    assert!(matches!(
        queued.payload,
        OutboundPayload::EscalationQueued(_)
    ));
    let convs = conversations_of(&sim, conv);
    assert_eq!(convs.len(), 1, "one conversation");
    assert_eq!(convs[0].pass_control_count, 1, "one passControl");
    assert_eq!(convs[0].ticket_ids.len(), 1, "one ticket");
    let users = sim
        .sunshine_users()
        .into_iter()
        .filter(|u| u.external_id.as_deref() == Some("cust-live-kill"))
        .count();
    assert_eq!(users, 1, "one user");
    let mut ids: Vec<String> = convs[0]
        .messages
        .iter()
        .filter_map(|m| {
            m.metadata["escalator_message_id"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "one copy of the transcript");
    second.terminate().await;
    client.close().await;
    sim.shutdown().await;
    env.cleanup().await;
}
