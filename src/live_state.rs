//! The state machine of a live conversation, kept in its record.
//!
//! ```text
//! requested -> handing over -> queued <-> with agent -> ended
//!                  \-> fallen back to a ticket (a ticket record, with fallback_reason)
//! ```
//! "requested" and "handing over" exist before the record does: the
//! hand-over's progress is in its journal (`P:conv:{T}:handover`); the record
//! is written when the hand-over is done (queued) or fell back to a ticket.
//! Agent signals, from any provider (Zendesk webhooks now, Salesforce
//! server-sent events later), move it on: [`LiveState::apply`] is pure, so
//! ordering, duplicates and out-of-order deliveries are decided here and
//! unit-tested.
use crate::contract::{
    AgentJoined, AgentLeft, AgentMessage, AgentTyping, ClosedBy, ConversationClosed,
    OutboundPayload, TicketRef,
};
use crate::provider::live::LiveSession;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LivePhase {
    /// Handed over; no agent has it yet.
    Queued,
    /// An agent is assigned.
    WithAgent,
    /// Closed by the agent, the customer or the system: nothing more is relayed.
    Ended,
}

/// The agent who has the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    pub id: String,
    pub display_name: String,
}

/// The live part of a conversation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveState {
    pub phase: LivePhase,
    pub session: LiveSession,
    /// The ticket tag that names this conversation.
    pub correlation_tag: String,
    /// The provider's ticket, once known, and whether the widget was told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
    #[serde(default)]
    pub ticket_announced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRef>,
    /// Time of the last assignment change applied: an older one arriving
    /// late is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_at: Option<DateTime<Utc>>,
}

/// Something the agent side did, as any provider reports it.
#[derive(Clone, PartialEq)]
pub enum AgentSignal {
    Message {
        text: String,
        display_name: Option<String>,
    },
    Assigned {
        agent: AgentRef,
        at: Option<DateTime<Utc>>,
    },
    Unassigned {
        at: Option<DateTime<Utc>>,
        /// Who was unassigned, when the provider says.
        previous: Option<String>,
    },
    Typing(bool),
    Closed(ClosedBy),
    /// The conversation's place in the agents' queue.
    QueuePosition(u32),
}

impl std::fmt::Debug for AgentSignal {
    // No text and no names: this reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentSignal::Message { .. } => "Message",
            AgentSignal::Assigned { .. } => "Assigned",
            AgentSignal::Unassigned { .. } => "Unassigned",
            AgentSignal::Typing(_) => "Typing",
            AgentSignal::Closed(_) => "Closed",
            AgentSignal::QueuePosition(_) => "QueuePosition",
        })
    }
}

impl LiveState {
    pub fn new(session: LiveSession, correlation_tag: String) -> LiveState {
        LiveState {
            phase: LivePhase::Queued,
            session,
            correlation_tag,
            ticket: None,
            ticket_announced: false,
            agent: None,
            assignment_at: None,
        }
    }

    pub fn is_ended(&self) -> bool {
        self.phase == LivePhase::Ended
    }

    /// Learn the ticket behind the conversation (first one wins; a later,
    /// different ticket of the same conversation replaces it unannounced).
    /// Returns whether it was new.
    pub fn learn_ticket(&mut self, ticket: TicketRef) -> bool {
        if self.ticket.as_ref().is_some_and(|t| t.id == ticket.id) {
            return false;
        }
        self.ticket = Some(ticket);
        self.ticket_announced = false;
        true
    }

    /// Apply one signal: the new state (self) and the outbound events, in
    /// order. Nothing after the end; a late assignment change (older than
    /// the last applied one) is ignored; a repeated state is not re-announced.
    pub fn apply(&mut self, signal: AgentSignal) -> Vec<OutboundPayload> {
        if self.is_ended() {
            return Vec::new();
        }
        let stale = |at: &Option<DateTime<Utc>>, last: &Option<DateTime<Utc>>| matches!((at, last), (Some(at), Some(last)) if at < last);
        let event = match signal {
            AgentSignal::Message { text, display_name } => {
                let display_name = display_name.or_else(|| self.agent_name());
                OutboundPayload::AgentMessage(AgentMessage {
                    text,
                    display_name,
                    ticket: self.announce_ticket(),
                })
            }
            AgentSignal::Typing(typing) => OutboundPayload::AgentTyping(AgentTyping { typing }),
            // Only while waiting: once an agent has it, a position means nothing.
            AgentSignal::QueuePosition(_) if self.phase != LivePhase::Queued => return Vec::new(),
            AgentSignal::QueuePosition(position) => {
                OutboundPayload::EscalationQueued(crate::contract::EscalationQueued {
                    position: Some(position),
                })
            }
            AgentSignal::Assigned { agent, at } => {
                if stale(&at, &self.assignment_at) {
                    return Vec::new();
                }
                self.assignment_at = at.or(self.assignment_at);
                if self.agent.as_ref() == Some(&agent) {
                    return Vec::new();
                }
                let mut events = Vec::new();
                if let Some(previous) = self.agent.take() {
                    // Transferred: the widget hears the first agent leave.
                    events.push(OutboundPayload::AgentLeft(AgentLeft {
                        display_name: Some(previous.display_name),
                        ticket: None,
                    }));
                }
                self.phase = LivePhase::WithAgent;
                let display_name = agent.display_name.clone();
                self.agent = Some(agent);
                events.push(OutboundPayload::AgentJoined(AgentJoined {
                    display_name,
                    ticket: self.announce_ticket(),
                }));
                return events;
            }
            AgentSignal::Unassigned { at, previous } => {
                // About an agent who no longer has it (a transfer delivered
                // newest first, in the same millisecond): nothing to undo.
                let someone_else = matches!(
                    (&previous, &self.agent),
                    (Some(p), Some(a)) if *p != a.id
                );
                if stale(&at, &self.assignment_at) || someone_else {
                    return Vec::new();
                }
                // Kept even when nobody is assigned: a join older than this
                // one, arriving after it, must not be applied.
                self.assignment_at = at.or(self.assignment_at);
                if self.agent.is_none() {
                    return Vec::new();
                }
                self.phase = LivePhase::Queued;
                let previous = self.agent.take();
                OutboundPayload::AgentLeft(AgentLeft {
                    display_name: previous.map(|a| a.display_name),
                    ticket: self.announce_ticket(),
                })
            }
            AgentSignal::Closed(closed_by) => {
                self.phase = LivePhase::Ended;
                OutboundPayload::ConversationClosed(ConversationClosed {
                    closed_by,
                    ticket: self.announce_ticket(),
                })
            }
        };
        vec![event]
    }

    fn agent_name(&self) -> Option<String> {
        self.agent.as_ref().map(|a| a.display_name.clone())
    }

    /// The ticket, the first time an event can carry it.
    fn announce_ticket(&mut self) -> Option<TicketRef> {
        if self.ticket_announced {
            return None;
        }
        let t = self.ticket.clone()?;
        self.ticket_announced = true;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn state() -> LiveState {
        LiveState::new(
            LiveSession {
                user_id: "u".into(),
                conversation_id: "c".into(),
                url: "https://acme.zendesk.com/agent/".into(),
            },
            "esc_tag".into(),
        )
    }

    fn alex() -> AgentRef {
        AgentRef {
            id: "9001".into(),
            display_name: "Alex".into(),
        }
    }

    fn at(s: u32) -> Option<DateTime<Utc>> {
        Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, s).single()
    }

    #[test]
    fn the_ticket_goes_out_once_with_the_first_event_that_knows_it() {
        let mut s = state();
        assert!(s.learn_ticket(TicketRef {
            id: "7".into(),
            url: "u".into()
        }));
        let first = s.apply(AgentSignal::Assigned {
            agent: alex(),
            at: at(1),
        });
        assert!(matches!(&first[..], [OutboundPayload::AgentJoined(j)] if j.ticket.is_some()));
        let second = s.apply(AgentSignal::Message {
            text: "hi".into(),
            display_name: None,
        });
        match &second[..] {
            [OutboundPayload::AgentMessage(m)] => {
                assert!(m.ticket.is_none());
                assert_eq!(m.display_name.as_deref(), Some("Alex"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.phase, LivePhase::WithAgent);
    }

    #[test]
    fn nothing_after_the_end_and_no_resurrection() {
        let mut s = state();
        assert_eq!(s.apply(AgentSignal::Closed(ClosedBy::Agent)).len(), 1);
        assert!(s.is_ended());
        for signal in [
            AgentSignal::Assigned {
                agent: alex(),
                at: at(9),
            },
            AgentSignal::Message {
                text: "late".into(),
                display_name: None,
            },
            AgentSignal::Closed(ClosedBy::Agent),
        ] {
            assert!(s.apply(signal).is_empty());
        }
        assert!(s.is_ended());
    }

    #[test]
    fn a_late_assignment_change_does_not_undo_a_newer_one() {
        let mut s = state();
        // Left at :05 arrives first, then the join of :01.
        s.apply(AgentSignal::Assigned {
            agent: alex(),
            at: at(0),
        });
        let left = s.apply(AgentSignal::Unassigned {
            at: at(5),
            previous: None,
        });
        assert_eq!(left.len(), 1);
        assert!(
            s.apply(AgentSignal::Assigned {
                agent: alex(),
                at: at(1)
            })
            .is_empty()
        );
        assert_eq!(s.phase, LivePhase::Queued);
    }

    #[test]
    fn a_leave_that_overtook_its_join_keeps_the_late_join_out() {
        let mut s = state();
        assert!(
            s.apply(AgentSignal::Unassigned {
                at: at(5),
                previous: None
            })
            .is_empty()
        );
        assert!(
            s.apply(AgentSignal::Assigned {
                agent: alex(),
                at: at(1)
            })
            .is_empty()
        );
        assert_eq!(s.phase, LivePhase::Queued);
        assert!(s.agent.is_none());
    }

    #[test]
    fn an_unassignment_of_the_previous_agent_does_not_remove_the_new_one() {
        let mut s = state();
        s.apply(AgentSignal::Assigned {
            agent: alex(),
            at: at(1),
        });
        let sam = AgentRef {
            id: "9002".into(),
            display_name: "Sam".into(),
        };
        // Sam's assignment and Alex's unassignment, same time, newest first.
        assert_eq!(
            s.apply(AgentSignal::Assigned {
                agent: sam.clone(),
                at: at(2)
            })
            .len(),
            2
        );
        let late = s.apply(AgentSignal::Unassigned {
            at: at(2),
            previous: Some("9001".into()),
        });
        assert!(late.is_empty(), "{late:?}");
        assert_eq!(s.agent.as_ref(), Some(&sam));
    }

    #[test]
    fn a_repeated_join_is_not_announced_twice_and_a_transfer_says_who_left() {
        let mut s = state();
        assert_eq!(
            s.apply(AgentSignal::Assigned {
                agent: alex(),
                at: None
            })
            .len(),
            1
        );
        assert!(
            s.apply(AgentSignal::Assigned {
                agent: alex(),
                at: None
            })
            .is_empty()
        );
        let sam = AgentRef {
            id: "9002".into(),
            display_name: "Sam".into(),
        };
        let events = s.apply(AgentSignal::Assigned {
            agent: sam,
            at: None,
        });
        assert!(matches!(
            &events[..],
            [
                OutboundPayload::AgentLeft(_),
                OutboundPayload::AgentJoined(_)
            ]
        ));
    }
}
