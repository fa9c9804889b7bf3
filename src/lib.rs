//! escalator: hands AI-chat conversations over to Salesforce and Zendesk support
//! teams and carries the agents' replies back.
pub mod amqp;
#[cfg(feature = "tooling")]
pub mod bench;
pub mod config;
pub mod contract;
#[cfg(feature = "tooling")]
pub mod demo;
pub mod deployment;
pub mod error;
pub mod explain;
pub mod ingress;
pub mod pipeline;
pub mod provider;
#[cfg(feature = "tooling")]
pub mod sandbox;
pub mod schema;
#[cfg(feature = "tooling")]
pub mod scratch;
pub mod secret;
pub mod settings;
#[cfg(feature = "tooling")]
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod webhook;
