//! Agent events for the widget: built with a stable seq and event id (so a
//! retry or replay republishes the same event) and published with confirms.
use crate::amqp::{Publisher, json_properties};
use crate::contract::{OutboundEvent, OutboundPayload, ProviderKind};
use crate::error::InfraError;
use crate::topology::OUTBOUND_EXCHANGE;
use chrono::{DateTime, Utc};
use lapin::types::ShortString;

/// Namespace of outbound event ids (UUID v5 of org/conversation/cause/type).
const EVENT_NS: uuid::Uuid = uuid::Uuid::from_u128(0x6d0f_3c1e_8a57_4d2b_9c1a_5e7f_2b3d_4c5e);

/// Publish the events that inbound message `cause` led to, in order, each
/// with the seq and time the store assigned it (`Store::commit`).
pub async fn publish(
    publisher: &Publisher,
    org_id: &str,
    conversation_id: &str,
    provider: ProviderKind,
    cause: &str,
    events: impl IntoIterator<Item = (OutboundPayload, (u64, DateTime<Utc>))>,
) -> Result<(), InfraError> {
    for (payload, (seq, occurred_at)) in events {
        let event_type = payload.event_type();
        let event = OutboundEvent {
            event_id: uuid::Uuid::new_v5(
                &EVENT_NS,
                format!("{org_id}/{conversation_id}/{cause}/{event_type}").as_bytes(),
            ),
            org_id: org_id.to_string(),
            conversation_id: conversation_id.to_string(),
            seq,
            occurred_at,
            provider,
            payload,
        };
        let body = serde_json::to_vec(&event)
            .map_err(|e| InfraError::Corrupt(format!("cannot serialize outbound event: {e}")))?;
        let props = crate::trace_context::onto_amqp(json_properties())
            .with_message_id(ShortString::from(event.event_id.to_string()))
            .with_type(ShortString::from(event_type))
            .with_timestamp(occurred_at.timestamp().max(0) as u64);
        publisher
            .publish(OUTBOUND_EXCHANGE, &event.routing_key(), &body, props)
            .await?;
        tracing::info!(event_type, seq, event_id = %event.event_id, "outbound event published");
    }
    Ok(())
}
