//! Zendesk live chat seen from the agent's side: what an agent does on a
//! messaging ticket (join, reply, leave, end the session, solve) and the
//! webhook deliveries that report it, with the delivery quirks a receiver must
//! survive (duplicates, reordering) available on command.
//!
//! Deliveries go out one request at a time, in order; every action returns
//! after the target answered each request it caused, so tests synchronise on
//! the call itself.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::state::{Req, Shared, SimResponse};
use super::types::{SimWebhookDelivery, WebhookTarget};
use super::webhooks::{self, Actor, Outgoing, Sequence};

/// Why an agent action could not be performed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimLiveError {
    #[error("no Sunshine conversation {0}")]
    UnknownConversation(String),
    #[error("Sunshine conversation {0} has no messaging ticket (no passControl yet)")]
    NoTicket(String),
    #[error("no Zendesk webhook target is configured (set_zendesk_webhook)")]
    NoWebhookTarget,
}

/// Webhook configuration, delivery modes and the delivery log.
#[derive(Default)]
pub(crate) struct LiveState {
    pub(crate) target: Option<WebhookTarget>,
    /// The next n events are delivered twice.
    pub(crate) duplicate_next: u32,
    /// While true, events are queued in `held` instead of sent.
    pub(crate) holding: bool,
    pub(crate) held: Vec<Outgoing>,
    pub(crate) deliveries: Vec<SimWebhookDelivery>,
    /// Events produced inside a request handler, sent after it (spawned).
    pub(crate) outbox: Vec<Outgoing>,
    next_invocation: u64,
}

impl LiveState {
    pub(crate) fn new() -> Self {
        Self {
            next_invocation: 1,
            ..Self::default()
        }
    }
}

/// Sends `events` (or holds them); returns the status of every request made.
pub(crate) async fn deliver(
    shared: &Shared,
    events: Vec<Outgoing>,
) -> Result<Vec<u16>, SimLiveError> {
    let _lane = shared.delivery_lane.lock().await;
    let (target, plan) = {
        let mut st = shared.lock();
        let target = st
            .live
            .target
            .clone()
            .ok_or(SimLiveError::NoWebhookTarget)?;
        if st.live.holding {
            st.live.held.extend(events);
            return Ok(Vec::new());
        }
        let mut plan = Vec::new();
        for event in events {
            let twice = st.live.duplicate_next > 0;
            if twice {
                st.live.duplicate_next -= 1;
            }
            plan.push((event.clone(), false));
            if twice {
                plan.push((event, true));
            }
        }
        (target, plan)
    };
    let mut statuses = Vec::with_capacity(plan.len());
    for (event, duplicate) in plan {
        let invocation = {
            let mut st = shared.lock();
            let n = st.live.next_invocation;
            st.live.next_invocation += 1;
            n
        };
        let status = send(shared, &target, &event, invocation).await;
        statuses.push(status);
        shared.lock().live.deliveries.push(SimWebhookDelivery {
            event_type: event.event_type.clone(),
            event_id: event.event_id.clone(),
            ticket_id: event.ticket_id,
            duplicate,
            status,
            body: event.body.clone(),
        });
    }
    Ok(statuses)
}

/// Spawns the delivery of events a request handler queued (the end-user
/// `message_added` echo); without a target they are dropped.
pub(crate) fn flush_outbox(shared: &Arc<Shared>) {
    let events = std::mem::take(&mut shared.lock().live.outbox);
    if events.is_empty() {
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Err(e) = deliver(&shared, events).await {
            tracing::debug!(error = %e, "sim: end-user message_added not delivered");
        }
    });
}

/// Stops holding and sends what was held (optionally newest first).
pub(crate) async fn release_held(shared: &Shared, reverse: bool) -> Result<Vec<u16>, SimLiveError> {
    let mut held = {
        let mut st = shared.lock();
        st.live.holding = false;
        std::mem::take(&mut st.live.held)
    };
    if reverse {
        held.reverse();
    }
    if held.is_empty() {
        return Ok(Vec::new());
    }
    deliver(shared, held).await
}

/// base64(HMAC-SHA256(secret, timestamp + body)), Zendesk's webhook signature.
pub fn webhook_signature(secret: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(body);
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// One POST; the status answered, or 0 when the target could not be reached.
async fn send(shared: &Shared, target: &WebhookTarget, event: &Outgoing, invocation: u64) -> u16 {
    let webhook_id = if event.trigger {
        webhooks::TRIGGER_WEBHOOK_ID
    } else {
        webhooks::EVENT_WEBHOOK_ID
    };
    let mut request = shared
        .http
        .post(&target.url)
        .header("content-type", "application/json")
        .header("user-agent", "Zendesk Webhook")
        .bearer_auth(&target.bearer_token)
        .header("fv-organisation-id", &target.org_id)
        .header("x-zendesk-webhook-id", webhook_id)
        .header("x-zendesk-webhook-invocation-id", invocation.to_string());
    if let Some(secret) = &target.signing_secret {
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        if let Some(signature) = webhook_signature(secret, &timestamp, event.body.as_bytes()) {
            request = request
                .header("x-zendesk-webhook-signature", signature)
                .header("x-zendesk-webhook-signature-timestamp", timestamp);
        }
    }
    match request.body(event.body.clone()).send().await {
        Ok(response) => response.status().as_u16(),
        Err(e) => {
            tracing::debug!(error = %e, event_type = %event.event_type, "sim: webhook delivery failed");
            0
        }
    }
}

/// The conversation's current messaging ticket id.
fn ticket_of(st: &super::state::State, conversation_id: &str) -> Result<u64, SimLiveError> {
    let conv = st
        .sun
        .conversations
        .iter()
        .find(|c| c.id == conversation_id)
        .ok_or_else(|| SimLiveError::UnknownConversation(conversation_id.to_owned()))?;
    let id = conv
        .ticket_id
        .ok_or_else(|| SimLiveError::NoTicket(conversation_id.to_owned()))?;
    if st.zd.tickets.contains_key(&id) {
        Ok(id)
    } else {
        Err(SimLiveError::NoTicket(conversation_id.to_owned()))
    }
}

fn release_control(st: &mut super::state::State, conversation_id: &str) {
    if let Some(conv) = st.sun.conversation_mut(conversation_id) {
        conv.agent_workspace_active = false;
    }
}

/// The agent takes the ticket: NEW -> OPEN (`status_changed`) and the
/// assignment (`agent_assignment_changed`).
pub(crate) async fn agent_joins(
    shared: &Shared,
    conversation_id: &str,
    agent_id: u64,
) -> Result<Vec<u16>, SimLiveError> {
    let events = {
        let mut st = shared.lock();
        let id = ticket_of(&st, conversation_id)?;
        let Some(t) = st.zd.tickets.get_mut(&id) else {
            return Err(SimLiveError::NoTicket(conversation_id.to_owned()));
        };
        let previous_status = t.status.clone();
        let previous_assignee = t.assignee_id;
        t.status = "open".to_owned();
        t.assignee_id = Some(agent_id);
        let status_changes = previous_status != "open";
        let seq = Sequence::new(if status_changes { 2 } else { 1 });
        let mut events = Vec::new();
        if status_changes {
            events.push(webhooks::status_changed(
                t,
                Some(agent_id),
                &previous_status,
                &seq,
                1,
            ));
        }
        events.push(webhooks::assignment_changed(
            t,
            Some(agent_id),
            previous_assignee,
            &seq,
            events.len() + 1,
        ));
        events
    };
    deliver(shared, events).await
}

/// A reply in Agent Workspace: a business message in the conversation
/// (`source.type zd:agentWorkspace`) and `message_added` with an agent actor.
/// The agent is the ticket's assignee, else the first seeded agent.
pub(crate) async fn agent_replies(
    shared: &Shared,
    conversation_id: &str,
    text: &str,
) -> Result<Vec<u16>, SimLiveError> {
    let event = {
        let mut st = shared.lock();
        let id = ticket_of(&st, conversation_id)?;
        let assignee = st.zd.tickets.get(&id).and_then(|t| t.assignee_id);
        let agent_id = assignee
            .or_else(|| st.zd.agents.keys().next().copied())
            .unwrap_or(super::zendesk::AGENT_USER_ID);
        let name = st
            .zd
            .agents
            .get(&agent_id)
            .map_or_else(|| format!("Agent {agent_id}"), |a| a.name.clone());
        let message_id = st
            .sun
            .add_agent_message(conversation_id, agent_id, &name, text)
            .ok_or_else(|| SimLiveError::UnknownConversation(conversation_id.to_owned()))?;
        st.zd.add_comment(id, agent_id, text);
        webhooks::message_added(
            id,
            Actor {
                id: agent_id.to_string(),
                name,
                kind: "agent",
            },
            conversation_id,
            &message_id,
            text,
        )
    };
    deliver(shared, vec![event]).await
}

/// The agent unassigns themself: `agent_assignment_changed` to `null`.
pub(crate) async fn agent_leaves(
    shared: &Shared,
    conversation_id: &str,
) -> Result<Vec<u16>, SimLiveError> {
    let event = {
        let mut st = shared.lock();
        let id = ticket_of(&st, conversation_id)?;
        let Some(t) = st.zd.tickets.get_mut(&id) else {
            return Err(SimLiveError::NoTicket(conversation_id.to_owned()));
        };
        let previous = t.assignee_id.take();
        webhooks::assignment_changed(t, previous, previous, &Sequence::new(1), 1)
    };
    deliver(shared, vec![event]).await
}

/// "End session" in Agent Workspace: the session-end trigger's body when the
/// admin set the trigger up (else nothing is delivered). Control goes back
/// from Agent Workspace (later user messages are not reported).
pub(crate) async fn end_session(
    shared: &Shared,
    conversation_id: &str,
) -> Result<Vec<u16>, SimLiveError> {
    let event = {
        let mut st = shared.lock();
        let id = ticket_of(&st, conversation_id)?;
        release_control(&mut st, conversation_id);
        let trigger = st.live.target.as_ref().map(|t| t.session_end_trigger);
        match trigger {
            None => return Err(SimLiveError::NoWebhookTarget),
            Some(false) => return Ok(Vec::new()),
            Some(true) => webhooks::session_end(id),
        }
    };
    deliver(shared, vec![event]).await
}

/// The agent solves the ticket: `status_changed` to SOLVED; Agent Workspace
/// releases control (a later passControl makes a new ticket).
pub(crate) async fn solve_ticket(
    shared: &Shared,
    conversation_id: &str,
) -> Result<Vec<u16>, SimLiveError> {
    let event = {
        let mut st = shared.lock();
        let id = ticket_of(&st, conversation_id)?;
        release_control(&mut st, conversation_id);
        let Some(t) = st.zd.tickets.get_mut(&id) else {
            return Err(SimLiveError::NoTicket(conversation_id.to_owned()));
        };
        let previous = std::mem::replace(&mut t.status, "solved".to_owned());
        let actor = t.assignee_id;
        webhooks::status_changed(t, actor, &previous, &Sequence::new(1), 1)
    };
    deliver(shared, vec![event]).await
}

/// A status change (NEW -> OPEN) of a ticket the escalator never made
/// (email channel, no tags): the receiver must ignore it.
pub(crate) async fn unrelated_ticket_event(shared: &Shared) -> Result<Vec<u16>, SimLiveError> {
    let event = {
        let mut st = shared.lock();
        let id = st.zd.create_unrelated_ticket();
        let Some(t) = st.zd.tickets.get_mut(&id) else {
            return Ok(Vec::new());
        };
        t.status = "open".to_owned();
        webhooks::status_changed(t, None, "new", &Sequence::new(1), 1)
    };
    deliver(shared, vec![event]).await
}

#[derive(Deserialize)]
struct ConversationBody {
    conversation_id: String,
    #[serde(default)]
    agent_id: Option<u64>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ModeBody {
    n: u32,
    reverse: bool,
}

/// `POST /_sim/zendesk/live/<action>` (for `escalator sim`): the `SimHandle`
/// actions over HTTP; answers `{"statuses":[...]}` once the target answered.
pub(crate) async fn control(shared: &Arc<Shared>, req: &Req) -> SimResponse {
    let action = req
        .path
        .trim_end_matches('/')
        .strip_prefix("/_sim/zendesk/live/")
        .unwrap_or_default();
    if req.method != axum::http::Method::POST {
        return SimResponse::json(405, &json!({"error": "use POST"}));
    }
    let conversation = || serde_json::from_slice::<ConversationBody>(&req.body);
    let mode = || serde_json::from_slice::<ModeBody>(&req.body).unwrap_or_default();
    let bad = |e: serde_json::Error| {
        SimResponse::json(400, &json!({"error": format!("invalid body: {e}")}))
    };
    let result = match action {
        "agent-joins" => match conversation() {
            Ok(b) => {
                let agent = b.agent_id.unwrap_or(super::zendesk::SEEDED_AGENTS[0].0);
                agent_joins(shared, &b.conversation_id, agent).await
            }
            Err(e) => return bad(e),
        },
        "agent-replies" => match conversation() {
            Ok(b) => {
                let text = b
                    .text
                    .unwrap_or_else(|| "Hello, how can I help?".to_owned());
                agent_replies(shared, &b.conversation_id, &text).await
            }
            Err(e) => return bad(e),
        },
        "agent-leaves" => match conversation() {
            Ok(b) => agent_leaves(shared, &b.conversation_id).await,
            Err(e) => return bad(e),
        },
        "end-session" => match conversation() {
            Ok(b) => end_session(shared, &b.conversation_id).await,
            Err(e) => return bad(e),
        },
        "solve" => match conversation() {
            Ok(b) => solve_ticket(shared, &b.conversation_id).await,
            Err(e) => return bad(e),
        },
        "unrelated-event" => unrelated_ticket_event(shared).await,
        "duplicate-next" => {
            shared.lock().live.duplicate_next = mode().n;
            Ok(Vec::new())
        }
        "hold" => {
            shared.lock().live.holding = true;
            Ok(Vec::new())
        }
        "release" => release_held(shared, mode().reverse).await,
        _ => return SimResponse::json(404, &json!({"error": "unknown live action"})),
    };
    match result {
        Ok(statuses) => SimResponse::json(200, &json!({"statuses": statuses})),
        Err(e) => SimResponse::json(409, &json!({"error": e.to_string()})),
    }
}
