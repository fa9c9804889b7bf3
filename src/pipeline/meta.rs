//! What the escalator carries in AMQP headers between its own stages: the
//! original routing key, the dedupe id, the conversation, and the failure
//! history of a message that went through the retry queue.
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

pub const H_ROUTING_KEY: &str = "x-escalator-routing-key";
pub const H_DEDUPE_ID: &str = "x-escalator-dedupe-id";
pub const H_ORG: &str = "x-escalator-org-id";
pub const H_CONVERSATION: &str = "x-escalator-conversation-id";
pub const H_ATTEMPTS: &str = "x-escalator-attempts";
pub const H_FIRST_FAILURE: &str = "x-escalator-first-failure";
pub const H_LAST_FAILURE: &str = "x-escalator-last-failure";
pub const H_NOT_BEFORE: &str = "x-escalator-not-before";
pub const H_LAST_ERROR: &str = "x-escalator-last-error";
pub const H_ERROR_CLASS: &str = "x-escalator-error-class";
pub const H_REASON: &str = "x-escalator-reason";
pub const H_STAGE: &str = "x-escalator-stage";
pub const H_DEAD_LETTERED_AT: &str = "x-escalator-dead-lettered-at";
/// Set by the intake router on a message it could not accept but can place
/// (known org and conversation): the worker dead-letters it and tells the widget.
pub const H_REJECTION: &str = "x-escalator-rejection";
/// Set by the intake router on a webhook it resolved to a conversation:
/// which event of the webhook body this copy is about (0-based).
pub const H_PROVIDER_EVENT: &str = "x-escalator-provider-event";

/// The escalator's headers of one message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub routing_key: String,
    pub dedupe_id: String,
    pub org_id: String,
    pub conversation_id: String,
    /// Failed processing rounds so far (each ends in the retry queue or a dead letter).
    pub attempts: u32,
    pub first_failure: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    /// Do not process before this time (backoff between broker rounds).
    pub not_before: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Why the intake router rejected the message (see [`H_REJECTION`]).
    pub rejection: Option<String>,
    /// The event of a webhook body this copy is about (see [`H_PROVIDER_EVENT`]).
    pub provider_event: Option<u32>,
}

impl Meta {
    pub fn read(props: &BasicProperties) -> Meta {
        let empty = FieldTable::default();
        let h = props.headers().as_ref().unwrap_or(&empty);
        Meta {
            routing_key: get_str(h, H_ROUTING_KEY).unwrap_or_default(),
            dedupe_id: get_str(h, H_DEDUPE_ID).unwrap_or_default(),
            org_id: get_str(h, H_ORG).unwrap_or_default(),
            conversation_id: get_str(h, H_CONVERSATION).unwrap_or_default(),
            attempts: get_int(h, H_ATTEMPTS)
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32,
            first_failure: get_int(h, H_FIRST_FAILURE).and_then(DateTime::from_timestamp_millis),
            last_failure: get_int(h, H_LAST_FAILURE).and_then(DateTime::from_timestamp_millis),
            not_before: get_int(h, H_NOT_BEFORE).and_then(DateTime::from_timestamp_millis),
            last_error: get_str(h, H_LAST_ERROR),
            rejection: get_str(h, H_REJECTION),
            provider_event: get_int(h, H_PROVIDER_EVENT).and_then(|i| u32::try_from(i).ok()),
        }
    }

    /// `props` with this meta written into its headers (other headers kept).
    pub fn write(&self, props: BasicProperties) -> BasicProperties {
        let mut h = props.headers().clone().unwrap_or_default();
        set_str(&mut h, H_ROUTING_KEY, &self.routing_key);
        set_str(&mut h, H_DEDUPE_ID, &self.dedupe_id);
        set_str(&mut h, H_ORG, &self.org_id);
        set_str(&mut h, H_CONVERSATION, &self.conversation_id);
        set_int(&mut h, H_ATTEMPTS, i64::from(self.attempts));
        let opt_time = |h: &mut FieldTable, k: &str, t: Option<DateTime<Utc>>| match t {
            Some(t) => set_int(h, k, t.timestamp_millis()),
            None => remove(h, k),
        };
        opt_time(&mut h, H_FIRST_FAILURE, self.first_failure);
        opt_time(&mut h, H_LAST_FAILURE, self.last_failure);
        opt_time(&mut h, H_NOT_BEFORE, self.not_before);
        match &self.last_error {
            Some(e) => set_str(&mut h, H_LAST_ERROR, e),
            None => remove(&mut h, H_LAST_ERROR),
        }
        match &self.rejection {
            Some(r) => set_str(&mut h, H_REJECTION, r),
            None => remove(&mut h, H_REJECTION),
        }
        match self.provider_event {
            Some(i) => set_int(&mut h, H_PROVIDER_EVENT, i64::from(i)),
            None => remove(&mut h, H_PROVIDER_EVENT),
        }
        props.with_headers(h)
    }

    /// Record one more failed round.
    pub fn failed(&mut self, reason: &str, now: DateTime<Utc>) {
        self.attempts += 1;
        self.first_failure.get_or_insert(now);
        self.last_failure = Some(now);
        self.last_error = Some(reason.to_string());
    }
}

/// `props` for one of the escalator's own hops (intake -> shard, dead
/// letters): everything kept but a producer's `expiration`, which would make
/// the copy expire in a work queue (dead-lettered unprocessed by the broker)
/// or vanish from the dead-letter queue.
pub fn internal_hop(props: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(v) = props.$get().clone() { out = out.$set(v); })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    out
}

pub fn get_str(h: &FieldTable, key: &str) -> Option<String> {
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

pub fn get_int(h: &FieldTable, key: &str) -> Option<i64> {
    match h.inner().get(key)? {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::Timestamp(t) => i64::try_from(*t).ok(),
        _ => None,
    }
}

pub fn set_str(h: &mut FieldTable, key: &str, value: &str) {
    h.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

pub fn set_int(h: &mut FieldTable, key: &str, value: i64) {
    h.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

fn remove(h: &mut FieldTable, key: &str) {
    let mut inner = h.inner().clone();
    inner.remove(key);
    *h = FieldTable::from(inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_headers() {
        let now = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let mut m = Meta {
            routing_key: "customer.message".into(),
            dedupe_id: "m-1".into(),
            org_id: "acme".into(),
            conversation_id: "c-1".into(),
            ..Meta::default()
        };
        m.failed("zendesk: HTTP 503", now);
        m.not_before = Some(now);
        let props = m.write(BasicProperties::default());
        assert_eq!(Meta::read(&props), m);
        assert_eq!(m.attempts, 1);
        let rejected = Meta {
            rejection: Some("/mode: is not one of the allowed values".into()),
            ..m
        };
        assert_eq!(
            Meta::read(&rejected.write(BasicProperties::default())),
            rejected
        );
    }

    #[test]
    fn internal_hops_drop_only_the_expiration() {
        let props = BasicProperties::default()
            .with_message_id(ShortString::from("m-1"))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_timestamp(7)
            .with_expiration(ShortString::from("60000"));
        let hop = internal_hop(&props);
        assert_eq!(hop.expiration(), &None);
        assert_eq!(hop.message_id(), props.message_id());
        assert_eq!(hop.content_type(), props.content_type());
        assert_eq!(hop.delivery_mode(), &Some(2));
        assert_eq!(hop.timestamp(), &Some(7));
    }
}
