//! The contract between the server and its proxy agents, and the transports
//! that carry it.
//!
//! Calls are named methods with a JSON object of named arguments, exactly as
//! oslo.messaging's RPC: that is what lets a Python oslo.messaging client talk
//! to a Rust agent over RabbitMQ, and lets the all-in-one mode use the same
//! contract over in-process channels. This crate is an API boundary: an agent of
//! the previous release must understand what a new server sends, so fields are
//! only ever added, with defaults.

pub mod amqp;
pub mod broker;
pub mod context;
pub mod inproc;
pub mod messages;
pub mod notify;
pub mod oslo;
pub mod transport;

pub use amqp::AmqpTransport;
pub use broker::{Broker, BrokerError, RabbitOptions};
pub use messages::{
    AgentState, ForwardEntry, ForwardResult, GroupState, MAX_USAGE_IDS, ResultStatus, SyncResult,
    UsageEntry, UsageReply, methods, topics,
};
pub use notify::{NotificationListener, NotificationSource};
pub use oslo::Notification;
pub use transport::{
    AgentClient, Incoming, PendingReply, RemoteError, Reply, RpcError, ServerClient, Target,
    Transport,
};
