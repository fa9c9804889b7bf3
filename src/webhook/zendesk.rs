//! Zendesk webhook payloads (ticket events, messaging events, the
//! session-end trigger body), typed. Filled in by the live-chat work.
