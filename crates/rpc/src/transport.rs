//! The transport abstraction and the typed clients built on it.
//!
//! A [`Transport`] moves `(method, args)` pairs to a [`Target`] and, for calls,
//! brings back a JSON reply. Everything above it is typed: [`AgentClient`] is
//! what the server uses to drive agents, [`ServerClient`] what agents use to
//! report to the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::messages::{
    AgentState, ForwardEntry, ForwardResult, MAX_USAGE_IDS, SyncResult, UsageReply, args, methods,
    topics,
};

/// A boxed future, so that transports can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a message goes, in oslo.messaging's terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub topic: String,
    /// A specific host listening on the topic; `None` means any one of them.
    pub server: Option<String>,
    /// Deliver a cast to every listener of the topic.
    pub fanout: bool,
}

impl Target {
    pub fn topic(topic: &str) -> Target {
        Target {
            topic: topic.to_owned(),
            server: None,
            fanout: false,
        }
    }

    pub fn host(topic: &str, host: &str) -> Target {
        Target {
            topic: topic.to_owned(),
            server: Some(host.to_owned()),
            fanout: false,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.server {
            Some(server) => write!(f, "{}.{server}", self.topic),
            None if self.fanout => write!(f, "{}_fanout", self.topic),
            None => f.write_str(&self.topic),
        }
    }
}

/// An exception raised by the remote side, in oslo's failure terms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{exc_type}: {message}")]
pub struct RemoteError {
    pub exc_type: String,
    pub message: String,
}

impl RemoteError {
    pub fn new(exc_type: &str, message: impl Into<String>) -> RemoteError {
        RemoteError {
            exc_type: exc_type.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("no reply to {method} from {target} within {after:?}")]
    Timeout {
        method: String,
        target: String,
        after: Duration,
    },
    #[error("nobody listens on {target}")]
    NoListener { target: String },
    #[error("{method} failed on {target}: {source}")]
    Remote {
        method: String,
        target: String,
        #[source]
        source: RemoteError,
    },
    #[error("cannot encode or decode {method}: {reason}")]
    Codec { method: String, reason: String },
    #[error("transport failure: {0}")]
    Transport(String),
}

impl RpcError {
    /// The remote side does not have the method: an agent older than it.
    /// oslo.messaging raises `NoSuchMethod`; Navigator's own agents before
    /// `get_usage` answered `UnsupportedVersion` for a method they lacked.
    pub fn is_no_such_method(&self) -> bool {
        matches!(
            self,
            RpcError::Remote { source, .. }
                if source.exc_type == "NoSuchMethod" || source.exc_type == "UnsupportedVersion"
        )
    }
}

/// A message delivered to a listener. `reply` is set for calls and empty for casts.
#[derive(Debug)]
pub struct Incoming {
    pub method: String,
    pub args: Value,
    /// The ids of the API request the message was sent for, if any.
    pub context: crate::context::RequestContext,
    pub reply: Option<oneshot::Sender<Result<Value, RemoteError>>>,
}

/// The reply to a call that has been sent: it resolves to the answer, or to
/// an error once the call's deadline has passed.
pub type PendingReply = BoxFuture<'static, Result<Value, RpcError>>;

/// Moves messages; see the module doc.
pub trait Transport: Send + Sync + 'static {
    /// Sends a call and returns as soon as it is on its way, with its reply
    /// still to come. Messages sent to the same target after this returns
    /// reach the listener after this one, so a caller can keep its messages
    /// to an agent in order without waiting for each answer. `timeout` runs
    /// from now and covers both the sending and the reply.
    fn send_call(
        &self,
        target: &Target,
        method: &str,
        args: Value,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<PendingReply, RpcError>>;

    /// Sends a call and waits for its reply.
    fn call(
        &self,
        target: &Target,
        method: &str,
        args: Value,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Value, RpcError>> {
        let sent = self.send_call(target, method, args, timeout);
        Box::pin(async move { sent.await?.await })
    }

    fn cast(
        &self,
        target: &Target,
        method: &str,
        args: Value,
    ) -> BoxFuture<'_, Result<(), RpcError>>;

    /// A cast that is worth nothing once `ttl` has passed (a heartbeat):
    /// a transport that queues messages drops it if nobody took it by then.
    /// The in-process transport delivers at once, so it ignores `ttl`.
    fn cast_expiring(
        &self,
        target: &Target,
        method: &str,
        args: Value,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RpcError>> {
        let _ = ttl;
        self.cast(target, method, args)
    }

    /// Starts receiving messages for `target`.
    fn listen(&self, target: &Target) -> BoxFuture<'_, Result<mpsc::Receiver<Incoming>, RpcError>>;

    /// For transports that can lose their connection: a counter that changes
    /// after every reconnect. Messages sent meanwhile may be lost, so a
    /// listener that sees it change asks for a full sync. `None` (the
    /// in-process transport) never reconnects.
    fn reconnects(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// For transports with a connection to lose: whether it is up now (a
    /// cheap look at its state, for health checks; nothing is sent). `None`
    /// (the in-process transport) has no connection.
    fn connected(&self) -> Option<bool> {
        None
    }
}

fn encode(method: &str, args: &impl Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(args).map_err(|e| RpcError::Codec {
        method: method.to_owned(),
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(method: &str, value: Value) -> Result<T, RpcError> {
    serde_json::from_value(value).map_err(|e| RpcError::Codec {
        method: method.to_owned(),
        reason: e.to_string(),
    })
}

/// The server's handle on its agents.
#[derive(Clone)]
pub struct AgentClient {
    transport: Arc<dyn Transport>,
    timeout: Duration,
}

impl AgentClient {
    pub fn new(transport: Arc<dyn Transport>, timeout: Duration) -> AgentClient {
        AgentClient { transport, timeout }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        host: &str,
        method: &str,
        args: &impl Serialize,
    ) -> Result<T, RpcError> {
        self.send(host, method, args).await?.await
    }

    /// Sends a call to `host` and returns once it is on its way, with the
    /// typed reply to come (see [`Transport::send_call`]).
    async fn send<T: DeserializeOwned>(
        &self,
        host: &str,
        method: &str,
        args: &impl Serialize,
    ) -> Result<Reply<T>, RpcError> {
        let target = Target::host(topics::PROXY, host);
        let pending = self
            .transport
            .send_call(&target, method, encode(method, args)?, self.timeout)
            .await?;
        let method = method.to_owned();
        Ok(Reply(Box::pin(
            async move { decode(&method, pending.await?) },
        )))
    }

    /// Replaces the agent's whole desired set.
    pub async fn sync_forwards(
        &self,
        host: &str,
        forwards: Vec<ForwardEntry>,
        generation: u64,
    ) -> Result<SyncResult, RpcError> {
        self.send_sync_forwards(host, forwards, generation)
            .await?
            .await
    }

    /// [`AgentClient::sync_forwards`] that returns once the message is sent,
    /// with the agent's answer to come.
    pub async fn send_sync_forwards(
        &self,
        host: &str,
        forwards: Vec<ForwardEntry>,
        generation: u64,
    ) -> Result<Reply<SyncResult>, RpcError> {
        self.send(
            host,
            methods::SYNC_FORWARDS,
            &args::SyncForwards {
                forwards,
                generation,
                buckets: None,
            },
        )
        .await
    }

    /// Sends a partial sync: `forwards` is the whole desired set of
    /// `buckets`; returns once sent, with the agent's answer to come. Only
    /// for agents that announce `features::DIGESTS`.
    pub async fn send_sync_buckets(
        &self,
        host: &str,
        buckets: Vec<u8>,
        forwards: Vec<ForwardEntry>,
    ) -> Result<Reply<SyncResult>, RpcError> {
        self.send(
            host,
            methods::SYNC_FORWARDS,
            &args::SyncForwards {
                forwards,
                generation: 0,
                buckets: Some(buckets),
            },
        )
        .await
    }

    /// Adds or changes one forward.
    pub async fn create_forward(
        &self,
        host: &str,
        forward: ForwardEntry,
    ) -> Result<ForwardResult, RpcError> {
        self.send_create_forward(host, forward).await?.await
    }

    /// [`AgentClient::create_forward`] that returns once the message is
    /// sent, with the agent's answer to come.
    pub async fn send_create_forward(
        &self,
        host: &str,
        forward: ForwardEntry,
    ) -> Result<Reply<ForwardResult>, RpcError> {
        self.send(
            host,
            methods::CREATE_FORWARD,
            &args::CreateForward { forward },
        )
        .await
    }

    /// Removes one forward; removing an unknown forward succeeds.
    pub async fn delete_forward(&self, host: &str, id: String) -> Result<(), RpcError> {
        self.send_delete_forward(host, id).await?.await
    }

    /// [`AgentClient::delete_forward`] that returns once the message is
    /// sent, with the agent's answer to come.
    pub async fn send_delete_forward(&self, host: &str, id: String) -> Result<Reply<()>, RpcError> {
        self.send(host, methods::DELETE_FORWARD, &args::DeleteForward { id })
            .await
    }

    pub async fn get_state(&self, host: &str) -> Result<AgentState, RpcError> {
        self.call(host, methods::GET_STATE, &args::GetState {})
            .await
    }

    /// What the data plane of `host` counted for `ids` (at most
    /// [`MAX_USAGE_IDS`]), waiting at most `timeout` rather than the
    /// client's own, longer one: usage is read on the path of API requests
    /// and scrapes, which must not hang on a dead agent. An agent older than
    /// the method fails with [`RpcError::is_no_such_method`].
    pub async fn get_usage(
        &self,
        host: &str,
        ids: Vec<String>,
        timeout: Duration,
    ) -> Result<UsageReply, RpcError> {
        let method = methods::GET_USAGE;
        if ids.len() > MAX_USAGE_IDS {
            return Err(RpcError::Codec {
                method: method.to_owned(),
                reason: format!(
                    "{} forward ids in one call, more than {MAX_USAGE_IDS}",
                    ids.len()
                ),
            });
        }
        let target = Target::host(topics::PROXY, host);
        let args = encode(method, &args::GetUsage { ids })?;
        let reply = self
            .transport
            .call(&target, method, args, timeout.min(self.timeout))
            .await?;
        decode(method, reply)
    }
}

/// An agent's typed answer to a call already sent; await it for the answer.
pub struct Reply<T>(BoxFuture<'static, Result<T, RpcError>>);

impl<T> Future for Reply<T> {
    type Output = Result<T, RpcError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// An agent's handle on the servers.
#[derive(Clone)]
pub struct ServerClient {
    transport: Arc<dyn Transport>,
    report_ttl: Option<Duration>,
}

impl ServerClient {
    pub fn new(transport: Arc<dyn Transport>) -> ServerClient {
        ServerClient {
            transport,
            report_ttl: None,
        }
    }

    /// Heartbeats that no server took within `ttl` are dropped rather than
    /// delivered late: a server that starts after an agent stopped must not
    /// take the heartbeats queued meanwhile for signs of life.
    pub fn with_report_ttl(self, ttl: Duration) -> ServerClient {
        ServerClient {
            report_ttl: Some(ttl),
            ..self
        }
    }

    /// Heartbeat; any server listening on the server topic takes it.
    pub async fn report_state(&self, state: AgentState) -> Result<(), RpcError> {
        let method = methods::REPORT_STATE;
        let args = encode(method, &args::ReportState { state })?;
        let target = Target::topic(topics::SERVER);
        match self.report_ttl {
            Some(ttl) => {
                self.transport
                    .cast_expiring(&target, method, args, ttl)
                    .await
            }
            None => self.transport.cast(&target, method, args).await,
        }
    }
}

/// Decodes the arguments of an incoming message, for listeners.
pub fn decode_args<T: DeserializeOwned>(incoming: &Incoming) -> Result<T, RemoteError> {
    serde_json::from_value(incoming.args.clone()).map_err(|e| {
        RemoteError::new(
            "ValueError",
            format!("bad arguments to {}: {e}", incoming.method),
        )
    })
}

/// The error of a call whose deadline passed.
pub(crate) fn call_timeout(method: &str, target: &Target, timeout: Duration) -> RpcError {
    RpcError::Timeout {
        method: method.to_owned(),
        target: target.to_string(),
        after: timeout,
    }
}

/// The reply to come of a call sent with `deadline`: what the listener
/// answers on `answer`, or the call's timeout. `keep` (a transport's
/// bookkeeping of the call) lives until then.
pub(crate) fn pending_reply(
    method: String,
    target: Target,
    timeout: Duration,
    deadline: tokio::time::Instant,
    answer: oneshot::Receiver<Result<Value, RemoteError>>,
    keep: impl Send + 'static,
) -> PendingReply {
    Box::pin(async move {
        let _keep = keep;
        let outcome = tokio::time::timeout_at(deadline, async {
            answer.await.map_err(|_| {
                RpcError::Transport(format!("the call to {method} on {target} was dropped"))
            })
        })
        .await;
        call_outcome(&method, &target, timeout, outcome)
    })
}

/// What a transport's call came to once sent: the deadline passed, the
/// transport failed, or the listener answered with a value or an exception.
/// Turns that into the call's result, naming the method and target in errors.
fn call_outcome(
    method: &str,
    target: &Target,
    timeout: Duration,
    outcome: Result<Result<Result<Value, RemoteError>, RpcError>, tokio::time::error::Elapsed>,
) -> Result<Value, RpcError> {
    match outcome {
        Err(_) => Err(call_timeout(method, target, timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(remote))) => Err(RpcError::Remote {
            method: method.to_owned(),
            target: target.to_string(),
            source: remote,
        }),
    }
}

/// Encodes a listener's reply.
pub fn encode_reply(value: &impl Serialize) -> Result<Value, RemoteError> {
    serde_json::to_value(value).map_err(|e| RemoteError::new("ValueError", e.to_string()))
}
