//! hark: a declarative trigger runner for distribution infrastructure, with the signed
//! ZeroMQ event bus it needs.
//!
//! Modules follow the data flow (see docs/architecture.md):
//! - [`event`]: envelopes, canonical JSON, keys and signatures;
//! - [`topic`]: dotted topic patterns shared by trust grants, tail and rules;
//! - [`sources`]: where received messages come from (ZeroMQ SUB today), one interface;
//! - [`admit`]: admission of every received message (envelope, trust, dedupe, sequence);
//! - [`bus`]: ZeroMQ sockets, relay, publisher and subscriber;
//! - [`rules`]: rule files: parsing, the compiled rule set, matching and rendering;
//! - [`jobs`]: matches into jobs: the pure scheduler (coalescing, concurrency, retries),
//!   the launch and runner of one command, the SQLite state, and reporting;
//! - [`trigger`]: the daemon that ties subscription, rules, scheduler and runner together;
//! - [`record`]: the JSON-lines recording format;
//! - [`history`]: queries over a journal (topic, time, signer, `where`), keyset paginated;
//! - [`http`]: the relay's HTTP API (health, history, datagrepper-compatible `/raw` and `/id`);
//! - [`discovery`]: relays found through DNS SRV records;
//! - [`config`], [`metrics`], [`duration`], [`systemd`], [`queue`]: shared plumbing;
//! - [`cli`]: the `hark` command.
pub mod admit;
pub mod bus;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod duration;
pub mod event;
pub mod history;
pub mod http;
pub mod jobs;
pub mod journal;
pub mod metrics;
pub mod queue;
pub mod record;
pub mod rules;
pub mod sources;
pub mod systemd;
pub mod topic;
pub mod trigger;
