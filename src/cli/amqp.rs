//! The `--amqp*` flags shared by `hark trigger`, `hark tail` and `hark record`: each one
//! overrides the same `amqp.*` setting of hark.yaml.

use std::path::PathBuf;

use crate::config::AmqpConfig;

#[derive(Debug, Default, Clone, clap::Args)]
pub struct AmqpArgs {
    /// Consume a queue of this AMQP 0-9-1 broker (RabbitMQ, fedora-messaging): an amqp://
    /// or amqps:// URL with user and vhost [default: amqp.url; off].
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
    /// The broker's name, `broker` of its events in rules [default: amqp.name, "amqp"].
    #[arg(long, value_name = "NAME")]
    pub amqp_name: Option<String>,
    /// Queue to consume (declared if missing) [default: amqp.queue; unset: a server-named
    /// queue that lives as long as the connection].
    #[arg(long, value_name = "QUEUE")]
    pub amqp_queue: Option<String>,
    /// Bind the queue: `EXCHANGE=ROUTING_KEY`, or a bare key on amq.topic (repeatable;
    /// replaces amqp.bindings) [default: amq.topic=#].
    #[arg(long, value_name = "[EXCHANGE=]KEY")]
    pub amqp_bind: Vec<String>,
    /// Unacked deliveries at most [default: amqp.prefetch, 100].
    #[arg(long, value_name = "N")]
    pub amqp_prefetch: Option<u16>,
    /// CA certificates (PEM) the broker's certificate must chain to [default: amqp.ca].
    #[arg(long, value_name = "FILE")]
    pub amqp_ca: Option<PathBuf>,
    /// Client certificate (PEM) [default: amqp.cert].
    #[arg(long, value_name = "FILE")]
    pub amqp_cert: Option<PathBuf>,
    /// The client certificate's key (PEM) [default: amqp.key].
    #[arg(long, value_name = "FILE")]
    pub amqp_key: Option<PathBuf>,
}

impl AmqpArgs {
    /// Flags over the file's settings.
    pub fn apply(self, c: &mut AmqpConfig) {
        if self.amqp.is_some() {
            c.url = self.amqp;
        }
        if let Some(name) = self.amqp_name {
            c.name = name;
        }
        if self.amqp_queue.is_some() {
            c.queue = self.amqp_queue;
        }
        if !self.amqp_bind.is_empty() {
            c.bindings = crate::sources::amqp::parse_bindings(&self.amqp_bind);
        }
        if let Some(n) = self.amqp_prefetch {
            c.prefetch = n;
        }
        for (flag, setting) in [
            (self.amqp_ca, &mut c.ca),
            (self.amqp_cert, &mut c.cert),
            (self.amqp_key, &mut c.key),
        ] {
            if flag.is_some() {
                *setting = flag;
            }
        }
    }
}
