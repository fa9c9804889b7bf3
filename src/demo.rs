//! `escalator demo`: the whole flow on the simulator, printed for a person.
use crate::contract::{ExternalKind, OutboundEvent, OutboundPayload};
use crate::sandbox::{SALESFORCE_ORG, Sandbox, ZENDESK_ORG, sample_escalation, sandbox_config};
use crate::scratch::{Scratch, VhostAdmin};
use crate::settings::Settings;
use chrono::Utc;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Run the demo in a vhost and key prefix of its own (made here, removed at
/// the end, also after an error or Ctrl-C): nothing of a real deployment on
/// the same broker and Redis is read or written.
pub async fn run(settings: Settings, management_url: &str) -> Result<(), String> {
    println!("escalator demo");
    println!("  RabbitMQ  {}", settings.amqp_url_redacted());
    println!("  Redis     {}", settings.redis_url_redacted());
    // Check both before making anything: the errors then name the URLs as given.
    check_reachable(&settings).await?;
    let admin = VhostAdmin::detect(management_url, &settings.amqp_url).await?;
    let scratch = Scratch::create(admin, &settings.amqp_url, "demo").await?;
    println!(
        "  scratch   vhost {} ({}), Redis key prefix {}: both removed at the end",
        scratch.vhost,
        scratch.admin.describe(),
        scratch.key_prefix
    );
    let mut settings = settings;
    settings.amqp_url = scratch.amqp_url.clone();
    settings.key_prefix = scratch.key_prefix.clone();
    // A small topology: the demo has two conversations.
    settings.shards = 4;
    let outcome = tokio::select! {
        r = in_sandbox(settings.clone()) => r,
        r = tokio::signal::ctrl_c() => Err(match r {
            Ok(()) => "interrupted (Ctrl-C)".to_string(),
            Err(e) => format!("cannot listen for Ctrl-C: {e}"),
        }),
    };
    let cleanup = scratch.remove(&settings.redis_url).await;
    match (outcome, cleanup) {
        (Ok(()), Ok(())) => {
            println!(
                "\ndemo finished: every step behaved as expected; its vhost and keys are removed."
            );
            Ok(())
        }
        (Ok(()), Err(c)) => Err(format!("the demo ran, but cleaning up failed: {c}")),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(format!("{e}\n(cleaning up failed too: {c})")),
    }
}

async fn check_reachable(settings: &Settings) -> Result<(), String> {
    let conn = crate::amqp::connect_explained(settings, "escalator-demo-check").await?;
    let _ = conn.close(200, "checked".into()).await;
    crate::store::Store::connect(&settings.redis_url, "escalator-demo", WAIT)
        .await
        .map_err(|e| crate::explain::redis(&settings.redis_url, &e))?;
    Ok(())
}

async fn in_sandbox(settings: Settings) -> Result<(), String> {
    let sandbox = Sandbox::start(settings, sandbox_config)
        .await?
        .with_ingress(Sandbox::zendesk_webhook)
        .await?;
    println!(
        "  simulator {}  (Zendesk, Sunshine Conversations and Salesforce APIs)",
        sandbox.sim.base_url()
    );
    if let Some(ingress) = &sandbox.ingress {
        println!(
            "  ingress   {}  (Zendesk webhooks, as the simulator delivers them)",
            ingress.webhook_url()
        );
    }
    let result = scenario(&sandbox).await;
    sandbox.stop().await;
    result
}

async fn scenario(sandbox: &Sandbox) -> Result<(), String> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    // 1. Zendesk ticket.
    let conv = format!("demo-{run}-zd");
    let mut widget = sandbox.listen(&format!("{ZENDESK_ORG}.#")).await?;
    println!("\n1. The AI agent escalates conversation {conv} to Zendesk (ticket mode)");
    sandbox
        .publish(
            "escalation.requested",
            &format!("{conv}-escalation"),
            &sample_escalation(ZENDESK_ORG, &conv),
        )
        .await?;
    let event = expect(&mut widget, &conv).await?;
    print_event(&event);
    println!("\n2. The customer writes again; the message goes to the ticket as a comment");
    let mut requests = sandbox.sim.subscribe();
    sandbox
        .publish(
            "customer.message",
            &format!("{conv}-m1"),
            &json!({
                "org_id": ZENDESK_ORG, "conversation_id": conv, "message_id": format!("{conv}-m1"),
                "text": "Also, my order number is 4711.", "sent_at": Utc::now(),
            }),
        )
        .await?;
    tokio::time::timeout(WAIT, async {
        while let Ok(r) = requests.recv().await {
            if r.method == "PUT" && r.path.starts_with("/api/v2/tickets/") && r.status < 300 {
                return;
            }
        }
    })
    .await
    .map_err(|_| "the customer's message did not reach the ticket within 30 s".to_string())?;
    if let Some(t) = sandbox
        .sim
        .zendesk_tickets()
        .into_iter()
        .find(|t| t.external_id.as_deref() == Some(conv.as_str()))
    {
        println!(
            "   ticket #{} now has {} comments (transcript + the customer's message)",
            t.id,
            t.comments.len()
        );
    }

    // 2. Salesforce case.
    let conv = format!("demo-{run}-sf");
    let mut widget = sandbox.listen(&format!("{SALESFORCE_ORG}.#")).await?;
    println!("\n3. The AI agent escalates conversation {conv} to Salesforce (Case)");
    sandbox
        .publish(
            "escalation.requested",
            &format!("{conv}-escalation"),
            &sample_escalation(SALESFORCE_ORG, &conv),
        )
        .await?;
    let event = expect(&mut widget, &conv).await?;
    print_event(&event);

    live_chat(sandbox, &run).await?;
    salesforce_live_chat(sandbox, &run).await
}

/// Salesforce live chat (Messaging for In-App and Web): the conversation
/// starts, Sam joins over the event stream, types and replies, the
/// customer's answer reaches Sam, Sam ends the session.
async fn salesforce_live_chat(sandbox: &Sandbox, run: &str) -> Result<(), String> {
    let conv = format!("demo-{run}-sf-live");
    let mut widget = sandbox.listen(&format!("{SALESFORCE_ORG}.#")).await?;
    println!(
        "\n9. The AI agent hands conversation {conv} to a live Salesforce agent (Enhanced Chat)"
    );
    let mut body = sample_escalation(SALESFORCE_ORG, &conv);
    body["mode"] = json!("live");
    sandbox
        .publish("escalation.requested", &format!("{conv}-escalation"), &body)
        .await?;
    let created = expect(&mut widget, &conv).await?;
    print_event(&created);
    let OutboundPayload::EscalationCreated(c) = &created.payload else {
        return Err("the live hand-over did not start with escalation.created".into());
    };
    let id = c.external_id.clone();
    let refused = || "the simulator does not know the messaging conversation".to_string();
    println!(
        "\n10. Sam, an Omni-Channel agent, accepts the chat; the event stream tells the widget"
    );
    if !sandbox.sim.miaw_agent_joins(&id, "Sam Support") {
        return Err(refused());
    }
    print_event(&past_queue(&mut widget, &conv).await?);
    sandbox.sim.miaw_agent_typing(&id, true);
    print_event(&past_queue(&mut widget, &conv).await?);
    sandbox
        .sim
        .miaw_agent_replies(&id, "Hi Ada, Sam here. I can see the two charges.")
        .ok_or_else(refused)?;
    print_event(&past_queue(&mut widget, &conv).await?);

    println!("\n11. The customer answers; the message reaches Sam's console once");
    let text = "Great, please refund one of them.";
    customer_says(sandbox, SALESFORCE_ORG, &conv, text).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sandbox
        .sim
        .miaw_conversations()
        .iter()
        .any(|c| c.id == id && c.customer_messages.iter().any(|(_, t)| t == text))
    {
        if tokio::time::Instant::now() > deadline {
            return Err("the customer's message did not reach the agent within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("   Sam sees in the Service Console: \"{text}\"");

    println!("\n12. Sam ends the messaging session");
    sandbox.sim.miaw_end_session(&id);
    print_event(&past_queue(&mut widget, &conv).await?);
    Ok(())
}

/// Zendesk live chat: hand-over, the agent joins and replies, the customer
/// answers, the agent ends the session.
async fn live_chat(sandbox: &Sandbox, run: &str) -> Result<(), String> {
    let conv = format!("demo-{run}-live");
    let mut widget = sandbox.listen(&format!("{ZENDESK_ORG}.#")).await?;
    println!("\n4. The AI agent hands conversation {conv} to a live Zendesk agent");
    let mut body = sample_escalation(ZENDESK_ORG, &conv);
    body["mode"] = json!("live");
    sandbox
        .publish("escalation.requested", &format!("{conv}-escalation"), &body)
        .await?;
    let created = expect(&mut widget, &conv).await?;
    print_event(&created);
    let OutboundPayload::EscalationCreated(c) = &created.payload else {
        return Err("the live hand-over did not start with escalation.created".into());
    };
    let sunshine = c.external_id.clone();
    print_event(&expect(&mut widget, &conv).await?);
    let sim_error = |e: crate::sim::SimLiveError| format!("the simulator refused: {e}");

    println!("\n5. Alex, an agent, takes the chat in Agent Workspace");
    sandbox
        .sim
        .agent_joins(&sunshine, 9001)
        .await
        .map_err(sim_error)?;
    print_event(&expect(&mut widget, &conv).await?);
    println!("\n6. Alex replies");
    sandbox
        .sim
        .agent_replies(
            &sunshine,
            "Hi Ada, I am sorry about the double charge. Let me look.",
        )
        .await
        .map_err(sim_error)?;
    print_event(&expect(&mut widget, &conv).await?);

    println!("\n7. The customer answers in the widget; the message reaches Alex");
    let text = "Thank you! It was order 4711.";
    customer_says(sandbox, ZENDESK_ORG, &conv, text).await?;
    let mut requests = sandbox.sim.subscribe();
    let reached = |s: &Sandbox| {
        s.sim
            .sunshine_conversations()
            .iter()
            .any(|c| c.id == sunshine && c.messages.iter().any(|m| m.text.as_deref() == Some(text)))
    };
    tokio::time::timeout(WAIT, async {
        while !reached(sandbox) {
            if requests.recv().await.is_err() {
                return;
            }
        }
    })
    .await
    .map_err(|_| "the customer's message did not reach the agent within 30 s".to_string())?;
    println!("   Alex sees in Agent Workspace: \"{text}\"");

    println!("\n8. Alex ends the messaging session");
    sandbox
        .sim
        .end_session(&sunshine)
        .await
        .map_err(sim_error)?;
    print_event(&expect(&mut widget, &conv).await?);
    Ok(())
}

/// The customer's message `text` in `conv`, as the AI agent's backend publishes it.
async fn customer_says(sandbox: &Sandbox, org: &str, conv: &str, text: &str) -> Result<(), String> {
    let body = json!({
        "org_id": org, "conversation_id": conv, "message_id": format!("{conv}-m1"),
        "text": text, "sent_at": Utc::now(),
    });
    sandbox
        .publish("customer.message", &format!("{conv}-m1"), &body)
        .await
}

/// The next event of `conv`, printing the waiting (queue position) ones on the way.
async fn past_queue(
    widget: &mut crate::sandbox::Listener,
    conv: &str,
) -> Result<OutboundEvent, String> {
    loop {
        let e = expect(widget, conv).await?;
        if !matches!(e.payload, OutboundPayload::EscalationQueued(_)) {
            return Ok(e);
        }
        print_event(&e);
    }
}

async fn expect(
    widget: &mut crate::sandbox::Listener,
    conv: &str,
) -> Result<OutboundEvent, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = widget.next(left).await else {
            return Err(format!(
                "no outbound event for {conv} within 30 s: is a worker stuck? run with RUST_LOG=info"
            ));
        };
        if event.conversation_id != conv {
            continue;
        }
        return match &event.payload {
            OutboundPayload::EscalationFailed(f) => {
                print_event(&event);
                Err(format!("the escalation failed: {}", f.reason))
            }
            _ => Ok(event),
        };
    }
}

fn print_event(e: &OutboundEvent) {
    let what = match &e.payload {
        OutboundPayload::EscalationCreated(c) => {
            let number = c
                .external_number
                .as_deref()
                .map(|n| format!(" (number {n})"))
                .unwrap_or_default();
            let kind = match c.external_kind {
                ExternalKind::ZendeskTicket => "Zendesk ticket",
                ExternalKind::SalesforceCase => "Salesforce Case",
                ExternalKind::SunshineConversation => "Sunshine conversation",
                ExternalKind::SalesforceMessaging => "Salesforce messaging session",
            };
            format!(
                "{kind} {}{number} created\n      agents open it at {}",
                c.external_id, c.url
            )
        }
        OutboundPayload::EscalationFailed(f) => format!("failed: {}", f.reason),
        OutboundPayload::EscalationQueued(q) => match q.position {
            Some(p) => format!("waiting for an agent (position {p} in the queue)"),
            None => "waiting for an agent".to_string(),
        },
        OutboundPayload::AgentJoined(j) => {
            let ticket = j
                .ticket
                .as_ref()
                .map(|t| format!(" (ticket {}, {})", t.id, t.url))
                .unwrap_or_default();
            format!("{} joined{ticket}", j.display_name)
        }
        OutboundPayload::AgentMessage(m) => format!(
            "{}: \"{}\"",
            m.display_name.as_deref().unwrap_or("the agent"),
            m.text
        ),
        OutboundPayload::AgentTyping(t) => {
            format!(
                "the agent {} typing",
                if t.typing { "is" } else { "stopped" }
            )
        }
        OutboundPayload::AgentLeft(l) => {
            format!("{} left", l.display_name.as_deref().unwrap_or("the agent"))
        }
        OutboundPayload::ConversationClosed(c) => {
            format!("closed by the {:?}", c.closed_by).to_lowercase()
        }
    };
    println!(
        "   widget hears: {} (seq {}) from {}: {what}",
        e.payload.event_type(),
        e.seq,
        e.provider
    );
}
