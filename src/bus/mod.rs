//! The bus: ZeroMQ sockets and what flows over them.
//!
//! - [`socket`] creates libzmq sockets with every option set explicitly;
//! - [`relay`] is `hark relay`: submit ROUTER + fedmsg SUB in, verified and countersigned
//!   events out on PUB;
//! - [`publish`] is the submitting client that waits for the relays' acks, and [`spool`]
//!   keeps what no relay took in time;
//! - [`heartbeat`] is the relay's periodic `{relay, epoch, head}` frame;
//! - [`journal_thread`] writes the relay's journal and answers replay beside its socket
//!   thread;
//! - [`subscribe`] receives published events from one or more relays.
//!
//! Whether an event may pass is decided by [`crate::admit`], never here.
//!
//! libzmq sockets are not thread-safe, so each socket is owned by exactly one thread;
//! other threads talk to it through channels.

pub mod ack;
pub mod amqp_out;
pub mod heartbeat;
pub mod journal_thread;
pub mod publish;
pub mod relay;
pub mod socket;
pub mod spool;
pub mod subscribe;
