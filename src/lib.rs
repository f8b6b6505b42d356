//! hark: a declarative trigger runner for distribution infrastructure, with the signed
//! ZeroMQ event bus it needs.
//!
//! Modules follow the data flow (see docs/architecture.md):
//! - [`event`]: envelopes, canonical JSON, keys and signatures;
//! - [`topic`]: dotted topic patterns shared by trust grants, tail and rules;
//! - [`bus`]: ZeroMQ sockets, the trust policy, relay, publisher and subscriber;
//! - [`config`]: `hark.yaml` with every default built in;
//! - [`cli`]: the `hark` command.
pub mod bus;
pub mod cli;
pub mod config;
pub mod duration;
pub mod event;
pub mod metrics;
pub mod runner;
pub mod store;
pub mod topic;
