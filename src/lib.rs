//! escalator: hands AI-chat conversations over to Salesforce and Zendesk support
//! teams and carries the agents' replies back.
pub mod amqp;
pub mod bench;
pub mod config;
pub mod contract;
pub mod demo;
pub mod error;
pub mod pipeline;
pub mod provider;
pub mod sandbox;
pub mod schema;
pub mod secret;
pub mod settings;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod topology;
