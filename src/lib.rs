//! escalator: hands AI-chat conversations over to Salesforce and Zendesk support
//! teams and carries the agents' replies back.
pub mod sim;
pub mod amqp;
pub mod config;
pub mod contract;
pub mod error;
pub mod secret;
pub mod settings;
pub mod store;
pub mod topology;
pub mod schema;
pub mod provider;
pub mod pipeline;
pub mod demo;
pub mod sandbox;
pub mod telemetry;
pub mod bench;
