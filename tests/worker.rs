//! End to end on the Zendesk ticket path: RabbitMQ -> worker -> simulator ->
//! Redis -> outbound, against the real broker and Redis.
mod common;

use common::*;
use escalator::contract::{ExternalKind, OutboundPayload};
use escalator::sandbox::ZENDESK_ORG;
use escalator::sim::FaultRule;
use std::time::Duration;

const ORG: &str = ZENDESK_ORG;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_escalation_makes_one_ticket_with_every_mapped_field() {
    let env = TestEnv::new("fields").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let mut body = escalation(ORG, "conv-fields");
    body["assignment"] = serde_json::json!({ "group_id": 555, "tags": ["vip", "billing"] });
    sb.publish("escalation.requested", "m-fields", &body)
        .await
        .unwrap();

    let event = next_event(&mut widget, "conv-fields").await;
    let c = created(&event);
    assert_eq!(event.seq, 1);
    assert_eq!(event.org_id, ORG);
    assert_eq!(c.external_kind, ExternalKind::ZendeskTicket);
    let tickets = sb.sim.zendesk_tickets();
    assert_eq!(tickets.len(), 1);
    let t = &tickets[0];
    assert_eq!(c.external_id, t.id.to_string());
    assert_eq!(
        c.url,
        format!("https://sandbox.zendesk.com/agent/tickets/{}", t.id)
    );
    assert_eq!(t.subject.as_deref(), Some("Cannot log in"));
    assert_eq!(t.requester_name.as_deref(), Some("Grace <Hopper>"));
    assert_eq!(t.requester_email.as_deref(), Some("grace@example.com"));
    assert_eq!(t.assignee_id, Some(1000), "org default assignee");
    assert_eq!(t.group_id, Some(555), "event overrides the org's group");
    assert_eq!(
        t.tags,
        vec!["vip".to_string(), "billing".to_string()],
        "event tags replace the org's"
    );
    assert_eq!(t.external_id.as_deref(), Some("conv-fields"));
    assert_eq!(t.comments.len(), 1);
    let comment = &t.comments[0];
    assert!(!comment.public, "transcript comment is private by default");
    let html = comment.html_body.as_deref().unwrap();
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "text is escaped: {html}"
    );
    assert!(!html.contains("<script>"));
    assert!(
        html.contains("Customer") && html.contains("AI assistant"),
        "speakers: {html}"
    );
    assert!(html.contains("2026-11-21 10:00:00 UTC"), "times: {html}");
    assert!(html.contains("plan: pro"), "context: {html}");
    let post = sb
        .sim
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    let key = post
        .headers
        .iter()
        .find(|(k, _)| k == "idempotency-key")
        .map(|(_, v)| v.clone());
    assert_eq!(
        key.as_deref(),
        Some("escalator:sandbox-zendesk:conv-fields")
    );
    assert!(
        widget.next(Duration::from_millis(300)).await.is_none(),
        "exactly one outbound event"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_replays_make_one_ticket() {
    let env = TestEnv::new("dupes").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let body = escalation(ORG, "conv-dup");
    sb.publish("escalation.requested", "m-dup", &body)
        .await
        .unwrap();
    sb.publish("escalation.requested", "m-dup", &body)
        .await
        .unwrap();
    let first = next_event(&mut widget, "conv-dup").await;
    // Days later: Zendesk has forgotten the Idempotency-Key; the same message
    // is replayed, and another producer re-sends the request with a new id.
    sb.sim.expire_idempotency_keys();
    sb.publish("escalation.requested", "m-dup", &body)
        .await
        .unwrap();
    sb.publish("escalation.requested", "m-dup-again", &body)
        .await
        .unwrap();
    let again = next_event(&mut widget, "conv-dup").await;
    assert_eq!(created(&again).external_id, created(&first).external_id);
    assert_eq!(sb.sim.zendesk_tickets().len(), 1, "one ticket in all");
    let posts = sb
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "the duplicates never reached Zendesk");
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_lost_after_create_still_one_ticket() {
    let env = TestEnv::new("lost").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    // The ticket is created, but the answer never arrives.
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        drop_connection: true,
        after_effect: true,
        ..Default::default()
    });
    sb.publish(
        "escalation.requested",
        "m-lost",
        &escalation(ORG, "conv-lost"),
    )
    .await
    .unwrap();
    let e = next_event(&mut widget, "conv-lost").await;
    assert_eq!(sb.sim.zendesk_tickets().len(), 1);
    assert_eq!(
        created(&e).external_id,
        sb.sim.zendesk_tickets()[0].id.to_string()
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_retry_after_then_success() {
    let env = TestEnv::new("ratelimit").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        status: Some(429),
        retry_after: Some(1),
        ..Default::default()
    });
    sb.publish(
        "escalation.requested",
        "m-429",
        &escalation(ORG, "conv-429"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-429").await;
    let posts: Vec<_> = sb
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].status, 429);
    let gap = posts[1].at - posts[0].at;
    assert!(
        gap >= chrono::Duration::milliseconds(950),
        "Retry-After honoured, waited {gap}"
    );
    assert_eq!(sb.sim.zendesk_tickets().len(), 1);
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_503s_then_success_make_one_ticket() {
    let env = TestEnv::new("503").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(3),
        status: Some(503),
        ..Default::default()
    });
    sb.publish(
        "escalation.requested",
        "m-503",
        &escalation(ORG, "conv-503"),
    )
    .await
    .unwrap();
    let e = next_event(&mut widget, "conv-503").await;
    assert!(matches!(e.payload, OutboundPayload::EscalationCreated(_)));
    let statuses: Vec<u16> = sb
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![503, 503, 503, 201]);
    assert_eq!(sb.sim.zendesk_tickets().len(), 1);
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_error_dead_letters_and_tells_the_widget() {
    let env = TestEnv::new("422").await;
    let sb = env.sandbox().await;
    let mut dlq = env.dead_letters().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let mut body = escalation(ORG, "conv-422");
    body["customer"]["email"] = serde_json::json!("not-an-email");
    sb.publish("escalation.requested", "m-422", &body)
        .await
        .unwrap();
    let e = next_event(&mut widget, "conv-422").await;
    let OutboundPayload::EscalationFailed(f) = &e.payload else {
        panic!("expected escalation.failed, got {e:?}")
    };
    assert_eq!(f.failed_event, "escalation.requested");
    // A sentence for people; the HTTP detail is in the dead letter only.
    assert!(
        f.reason
            .starts_with("The support ticket could not be created: the requester's email address"),
        "{}",
        f.reason
    );
    assert!(
        !f.reason.contains("not-an-email") && !f.reason.contains("422"),
        "{}",
        f.reason
    );
    assert_eq!(f.code, escalator::contract::FailureCode::ProviderRejected);
    let dl = dlq.next().await;
    assert_eq!(dl.routing_key, "escalation.requested");
    assert_eq!(dl.message_id.as_deref(), Some("m-422"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dl.body).unwrap(),
        body,
        "original body kept"
    );
    assert_eq!(dl.headers["x-escalator-error-class"], "permanent");
    assert!(
        dl.headers["x-escalator-reason"].contains("RecordInvalid"),
        "{:?}",
        dl.headers
    );
    assert!(dl.headers.contains_key("x-escalator-first-failure"));
    assert!(dl.headers.contains_key("x-escalator-last-failure"));
    assert!(dl.headers["x-escalator-attempts"].contains('1'));
    let everything = format!("{:?}", dl.headers);
    assert!(
        !everything.contains("sim-zendesk-token"),
        "no secret in the dead letter"
    );
    let posts = sb
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "permanent errors are not retried");
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_messages_are_dead_lettered_and_the_worker_goes_on() {
    let env = TestEnv::new("bad").await;
    let sb = env.sandbox().await;
    let mut dlq = env.dead_letters().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish_raw("escalation.requested", Some("bad-1"), b"{not json")
        .await
        .unwrap();
    let mut invalid = escalation(ORG, "conv-bad");
    invalid["mode"] = serde_json::json!("carrier-pigeon");
    sb.publish("escalation.requested", "bad-2", &invalid)
        .await
        .unwrap();
    sb.publish(
        "escalation.requested",
        "bad-3",
        &escalation("no-such-org", "conv-bad"),
    )
    .await
    .unwrap();
    sb.publish("escalation.exploded", "bad-4", &escalation(ORG, "conv-bad"))
        .await
        .unwrap();
    sb.publish(
        "escalation.requested",
        "good",
        &escalation(ORG, "conv-good"),
    )
    .await
    .unwrap();

    let mut reasons = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let dl = dlq.next().await;
        assert_eq!(dl.headers["x-escalator-error-class"], "invalid");
        reasons.insert(
            dl.message_id.clone().unwrap(),
            dl.headers["x-escalator-reason"].clone(),
        );
    }
    assert!(reasons["bad-1"].contains("not JSON"), "{reasons:?}");
    assert!(reasons["bad-2"].contains("/mode"), "{reasons:?}");
    assert!(
        reasons["bad-3"].contains("unknown org `no-such-org`"),
        "{reasons:?}"
    );
    assert!(
        reasons["bad-4"].contains("unknown routing key `escalation.exploded`"),
        "{reasons:?}"
    );
    let e = next_event(&mut widget, "conv-good").await;
    assert!(matches!(e.payload, OutboundPayload::EscalationCreated(_)));
    assert_eq!(sb.sim.zendesk_tickets().len(), 1);
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_messages_become_requester_comments_once_and_in_order() {
    let env = TestEnv::new("comments").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish("escalation.requested", "c-esc", &escalation(ORG, "conv-c"))
        .await
        .unwrap();
    for i in 1..=5 {
        let msg = customer_message(ORG, "conv-c", &format!("cm-{i}"), &format!("message {i}"));
        sb.publish("customer.message", &format!("cm-{i}"), &msg)
            .await
            .unwrap();
    }
    // A duplicate publish of message 3.
    let msg = customer_message(ORG, "conv-c", "cm-3", "message 3");
    sb.publish("customer.message", "cm-3", &msg).await.unwrap();
    next_event(&mut widget, "conv-c").await;
    until_sim(&sb.sim, || {
        sb.sim
            .zendesk_tickets()
            .first()
            .is_some_and(|t| t.comments.len() >= 6)
    })
    .await;
    let t = &sb.sim.zendesk_tickets()[0];
    let bodies: Vec<_> = t.comments[1..]
        .iter()
        .map(|c| c.body.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        bodies,
        (1..=5).map(|i| format!("message {i}")).collect::<Vec<_>>()
    );
    assert!(
        t.comments[1..]
            .iter()
            .all(|c| c.author_id == t.requester_id && c.public),
        "authored by the requester"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_message_holds_back_later_ones_of_its_conversation_only() {
    let env = TestEnv::new("park").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish("escalation.requested", "p-esc", &escalation(ORG, "conv-p"))
        .await
        .unwrap();
    sb.publish("escalation.requested", "q-esc", &escalation(ORG, "conv-q"))
        .await
        .unwrap();
    next_events(&mut widget, &["conv-p", "conv-q"]).await;
    // The first comment of conv-p fails through all in-process attempts
    // (4) and one broker round: it must go to the retry queue, and the
    // second comment must wait for it.
    let p_ticket = sb
        .sim
        .zendesk_tickets()
        .iter()
        .find(|t| t.external_id.as_deref() == Some("conv-p"))
        .unwrap()
        .id;
    sb.sim.inject(FaultRule {
        method: Some("PUT".into()),
        path_prefix: format!("/api/v2/tickets/{p_ticket}"),
        times: Some(5),
        status: Some(503),
        ..Default::default()
    });
    sb.publish(
        "customer.message",
        "p-1",
        &customer_message(ORG, "conv-p", "p-1", "first"),
    )
    .await
    .unwrap();
    sb.publish(
        "customer.message",
        "p-2",
        &customer_message(ORG, "conv-p", "p-2", "second"),
    )
    .await
    .unwrap();
    sb.publish(
        "customer.message",
        "q-1",
        &customer_message(ORG, "conv-q", "q-1", "other conversation"),
    )
    .await
    .unwrap();
    until_sim(&sb.sim, || {
        let ts = sb.sim.zendesk_tickets();
        ts.iter()
            .find(|t| t.id == p_ticket)
            .is_some_and(|t| t.comments.len() == 3)
    })
    .await;
    let ts = sb.sim.zendesk_tickets();
    let p = ts.iter().find(|t| t.id == p_ticket).unwrap();
    let bodies: Vec<_> = p.comments[1..]
        .iter()
        .map(|c| c.body.clone().unwrap_or_default())
        .collect();
    assert_eq!(bodies, vec!["first", "second"]);
    let q = ts
        .iter()
        .find(|t| t.external_id.as_deref() == Some("conv-q"))
        .unwrap();
    assert_eq!(
        q.comments.len(),
        2,
        "the other conversation was not blocked"
    );
    let q_at = q.comments[1].created_at;
    assert!(
        q_at < p.comments[1].created_at,
        "conv-q went ahead while conv-p waited"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_that_never_end_are_dead_lettered_after_the_last_round() {
    let env = TestEnv::new("exhaust").await;
    let sb = env.sandbox().await;
    let mut dlq = env.dead_letters().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        status: Some(503),
        ..Default::default()
    });
    sb.publish("escalation.requested", "x-esc", &escalation(ORG, "conv-x"))
        .await
        .unwrap();
    let e = next_event(&mut widget, "conv-x").await;
    let OutboundPayload::EscalationFailed(f) = &e.payload else {
        panic!("{e:?}")
    };
    assert_eq!(f.error_class, escalator::error::ErrorClass::Transient);
    let dl = dlq.next().await;
    assert_eq!(dl.headers["x-escalator-error-class"], "transient");
    assert!(
        dl.headers["x-escalator-reason"].contains("gave up after 3 attempts"),
        "{:?}",
        dl.headers
    );
    let posts = sb
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 3 * 4, "3 broker rounds of 4 in-process attempts");
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_whose_answer_was_lost_is_not_added_twice() {
    let env = TestEnv::new("lostcomment").await;
    // A broken connection may still land: the look-up waits twice the HTTP timeout.
    let mut settings = env.settings.clone();
    settings.http_timeout_ms = 2_000;
    let sb = env
        .sandbox_with(settings, escalator::sandbox::sandbox_config)
        .await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish(
        "escalation.requested",
        "lc-esc",
        &escalation(ORG, "conv-lc"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-lc").await;
    let ticket = sb.sim.zendesk_tickets()[0].id;
    // Zendesk adds the comment, but the answer never arrives.
    sb.sim.inject(FaultRule {
        method: Some("PUT".into()),
        path_prefix: format!("/api/v2/tickets/{ticket}"),
        times: Some(1),
        drop_connection: true,
        after_effect: true,
        ..Default::default()
    });
    sb.publish(
        "customer.message",
        "lc-1",
        &customer_message(ORG, "conv-lc", "lc-1", "it still fails"),
    )
    .await
    .unwrap();
    sb.publish(
        "customer.message",
        "lc-2",
        &customer_message(ORG, "conv-lc", "lc-2", "hello?"),
    )
    .await
    .unwrap();
    until_sim(&sb.sim, || sb.sim.zendesk_tickets()[0].comments.len() >= 3).await;
    let bodies: Vec<_> = sb.sim.zendesk_tickets()[0].comments[1..]
        .iter()
        .map(|c| c.body.clone().unwrap_or_default())
        .collect();
    assert_eq!(bodies, vec!["it still fails", "hello?"]);
    let lookups = sb
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/audits"))
        .count();
    assert_eq!(lookups, 1, "the retry looked before re-sending");
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_budget_makes_excess_work_wait_without_starving_other_orgs() {
    let env = TestEnv::new("budget").await;
    let sb = env
        .sandbox_with(env.settings.clone(), |sim| {
            format!(
                "{}\n[orgs.limited]\nprovider = \"zendesk\"\n[orgs.limited.zendesk]\nsubdomain = \"limited\"\nemail = \"agent@example.com\"\napi_token = \"sim-zendesk-token\"\nbase_url = \"{sim}\"\n# 120/min: bursts of 12, then one every 0.5 s\nrequests_per_minute = 120\n",
                escalator::sandbox::sandbox_config(sim)
            )
        })
        .await;
    let mut limited = sb.listen("limited.#").await.unwrap();
    let mut other = sb.listen(&format!("{ORG}.#")).await.unwrap();
    const N: usize = 20;
    for i in 0..N {
        let conv = format!("lim-{i:02}");
        sb.publish("escalation.requested", &conv, &escalation("limited", &conv))
            .await
            .unwrap();
    }
    sb.publish(
        "escalation.requested",
        "free",
        &escalation(ORG, "conv-free"),
    )
    .await
    .unwrap();
    let free = next_event(&mut other, "conv-free").await;
    assert!(matches!(
        free.payload,
        OutboundPayload::EscalationCreated(_)
    ));
    let free_at = chrono::Utc::now();
    for _ in 0..N {
        let e = limited
            .next(WAIT)
            .await
            .expect("every limited escalation is created, none fails");
        assert!(
            matches!(e.payload, OutboundPayload::EscalationCreated(_)),
            "{e:?}"
        );
    }
    let tickets: Vec<_> = sb
        .sim
        .zendesk_tickets()
        .into_iter()
        .filter(|t| {
            t.external_id
                .as_deref()
                .is_some_and(|e| e.starts_with("lim-"))
        })
        .collect();
    assert_eq!(tickets.len(), N);
    let first = tickets.iter().map(|t| t.created_at).min().unwrap();
    let last = tickets.iter().map(|t| t.created_at).max().unwrap();
    assert!(
        last - first >= chrono::Duration::milliseconds(3_000),
        "the budget spread {N} creates over {}",
        last - first
    );
    assert!(
        free_at < last,
        "the other org was not held up behind the limited org's backlog"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_processed_again() {
    let env = TestEnv::new("replay").await;
    let sb = env.sandbox().await;
    let mut dlq = env.dead_letters().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    // Zendesk refuses once (say, a field the admin has since fixed).
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        status: Some(422),
        ..Default::default()
    });
    sb.publish(
        "escalation.requested",
        "m-replay",
        &escalation(ORG, "conv-replay"),
    )
    .await
    .unwrap();
    let failed = next_event(&mut widget, "conv-replay").await;
    assert!(
        matches!(failed.payload, OutboundPayload::EscalationFailed(_)),
        "{failed:?}"
    );
    let dl = dlq.next().await;
    // An operator replays it as it was: same routing key, body and message id.
    sb.publish_raw(&dl.routing_key, dl.message_id.as_deref(), &dl.body)
        .await
        .unwrap();
    let e = next_event(&mut widget, "conv-replay").await;
    assert_eq!(
        created(&e).external_id,
        sb.sim.zendesk_tickets()[0].id.to_string()
    );
    assert_eq!(
        e.seq,
        failed.seq + 1,
        "the widget sees the failure, then the ticket"
    );
    assert_eq!(sb.sim.zendesk_tickets().len(), 1);
    sb.stop().await;
    env.cleanup().await;
}
