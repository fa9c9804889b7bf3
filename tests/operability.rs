//! Operability: the shard count, secrets in errors, a fresh machine.
mod common;
