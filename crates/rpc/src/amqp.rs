//! The RabbitMQ transport of cluster mode, wire-compatible with oslo.messaging's
//! rabbit driver, so that Python oslo peers and Rust peers share one broker.
//!
//! Topology, exactly as oslo declares it (non-durable, so flags match peers
//! running with oslo's defaults):
//! - topic exchange `<exchange>` (`navigator`); a listener on `topic` consumes
//!   the shared queue `topic`, a listener on `topic.host` the queue `topic.host`,
//!   each bound with its own name as routing key;
//! - fanout exchange `<topic>_fanout` (auto-delete) with one queue
//!   `<topic>_fanout_<uuid>` per listener, kept for the life of the transport;
//! - one reply queue `reply_<uuid>` per transport, on the default exchange;
//!   calls carry `_msg_id` and `_reply_q` in the body (no AMQP reply-to).
//!
//! A supervisor task owns the connection. When it drops (broker restart,
//! network), it reconnects with jittered exponential backoff (so that agents
//! do not come back in lockstep) over the configured hosts in order,
//! re-declares everything and restarts the consumers; each
//! reconnect is counted in a watch channel ([`AmqpTransport::reconnects`]) so
//! that an agent can ask for a full sync, because non-durable queues and the
//! messages in them do not survive a broker restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::{AMQPUriTcpExt, RustlsConnector, TLSConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use navigator_core::Backoff;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::broker::{Broker, CONNECT_TIMEOUT, Host, RabbitOptions};
use crate::oslo::{self, ReplyKind, ReplyTo};
use crate::transport::{
    BoxFuture, Incoming, PendingReply, RemoteError, RpcError, Target, Transport, call_timeout,
    pending_reply,
};

/// oslo's default `control_exchange` is `openstack`; Navigator uses its own.
pub const DEFAULT_EXCHANGE: &str = "navigator";

/// Depth of each listener's queue, as in the in-process transport.
const QUEUE_DEPTH: usize = 1024;
/// Unacknowledged deliveries per consumer channel, so that a slow listener
/// leaves messages in the broker rather than in this process's memory.
const PREFETCH: u16 = 64;
/// oslo's `x-expires` for reply and fanout queues (30 min): a queue whose
/// owner died goes away on its own.
const QUEUE_EXPIRES_MS: i32 = 1_800_000;
/// How many recent `_unique_id`s a listener remembers to drop redeliveries (as oslo).
const DEDUP_WINDOW: usize = 16;
/// Reconnect backoff (jittered, `navigator_core::Backoff`): first delay, and
/// the cap no pause exceeds. The jitter keeps a fleet of agents that lost the
/// same broker from reconnecting to it in lockstep.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a cast or a reply waits for the connection to come back.
const PUBLISH_WAIT: Duration = Duration::from_secs(15);

/// A live connection and its channels. Cloned freely; the broker objects it
/// stands for die with the connection.
#[derive(Clone)]
struct Session {
    connection: Arc<Connection>,
    /// Publishes requests, casts and replies.
    publish: Channel,
    /// Carries every consumer, with a prefetch limit.
    consume: Channel,
    /// Woken by whoever sees the connection fail; the supervisor reconnects.
    lost: Arc<Notify>,
    host: String,
}

/// A registered listener, re-declared on every reconnect.
struct Listener {
    target: Target,
    queue: String,
    sender: mpsc::Sender<Incoming>,
}

/// A call waiting for its reply.
struct Pending {
    reply: oneshot::Sender<Result<Value, RemoteError>>,
    /// A result sent ahead of its `ending` message by an old oslo server.
    partial: Option<Value>,
}

struct Inner {
    broker: Broker,
    exchange: String,
    reply_queue: String,
    /// The id in this transport's fanout queue names, fixed for its life (as
    /// oslo), so a reconnect finds the same queue if it survived.
    fanout_id: String,
    session: watch::Sender<Option<Session>>,
    /// Calls in flight, by `_msg_id`. Never held across an await.
    pending: Mutex<HashMap<String, Pending>>,
    /// Held while declaring, so that a listener added during a reconnect is
    /// declared exactly once on the new connection.
    listeners: tokio::sync::Mutex<Vec<Listener>>,
    /// Reconnects since the first connection.
    reconnects: watch::Sender<u64>,
    /// Consumer and reply tasks of the live connection, aborted on drop.
    tasks: Mutex<JoinSet<()>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// See the module doc.
pub struct AmqpTransport {
    inner: Arc<Inner>,
}

fn transport_error(host: &str, what: &str, e: lapin::Error) -> RpcError {
    RpcError::Transport(format!("RabbitMQ {host}: {what}: {e}"))
}

fn properties() -> BasicProperties {
    // kombu's properties on every oslo message: JSON, persistent, no headers.
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default())
}

fn expiring_queue_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(QUEUE_EXPIRES_MS));
    args
}

impl AmqpTransport {
    /// Connects to the first reachable broker of `transport_url` and declares
    /// the exchange and this transport's reply queue. Fails if no broker can
    /// be reached now; once connected, outages are survived by reconnecting.
    /// Options come from the URL's query alone; see [`AmqpTransport::connect_to`].
    pub async fn connect(transport_url: &str, exchange: &str) -> Result<AmqpTransport, RpcError> {
        let broker = Broker::new(transport_url, &RabbitOptions::default())?;
        AmqpTransport::connect_to(broker, exchange).await
    }

    /// As [`AmqpTransport::connect`], to a [`Broker`] made from `transport_url`
    /// and the `[oslo_messaging_rabbit]` options.
    pub async fn connect_to(broker: Broker, exchange: &str) -> Result<AmqpTransport, RpcError> {
        let (session, _) = watch::channel(None);
        let (reconnects, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            broker,
            exchange: exchange.to_owned(),
            reply_queue: format!("reply_{}", oslo::new_id()),
            fanout_id: oslo::new_id(),
            session,
            pending: Mutex::new(HashMap::new()),
            listeners: tokio::sync::Mutex::new(Vec::new()),
            reconnects,
            tasks: Mutex::new(JoinSet::new()),
            supervisor: Mutex::new(None),
        });
        let session = open_session(&inner).await?;
        let supervisor = tokio::spawn(supervise(inner.clone(), session));
        *lock(&inner.supervisor) = Some(supervisor);
        Ok(AmqpTransport { inner })
    }

    /// Counts reconnects after the first connection; it changes after every
    /// reconnect, once everything is declared again.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.subscribe()
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.session.borrow().is_some()
    }

    /// The name of this transport's reply queue.
    pub fn reply_queue(&self) -> &str {
        &self.inner.reply_queue
    }

    /// Deletes this transport's fanout queues and closes the connection, as
    /// oslo does on a clean stop (otherwise they linger for 30 minutes).
    pub async fn close(&self) {
        if let Some(supervisor) = lock(&self.inner.supervisor).take() {
            supervisor.abort();
        }
        lock(&self.inner.tasks).abort_all();
        let Some(session) = self.inner.session.send_replace(None) else {
            return;
        };
        let fanout_queues: Vec<String> = self
            .inner
            .listeners
            .lock()
            .await
            .iter()
            .filter(|l| l.target.fanout)
            .map(|l| l.queue.clone())
            .collect();
        for queue in fanout_queues {
            let _ = session
                .publish
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = session.connection.close(200, "OK".into()).await;
    }
}

impl Drop for AmqpTransport {
    fn drop(&mut self) {
        // The tasks hold the inner state; stop them so that it, and the
        // connection, go away with the transport.
        if let Some(supervisor) = lock(&self.inner.supervisor).take() {
            supervisor.abort();
        }
        lock(&self.inner.tasks).abort_all();
        self.inner.session.send_replace(None);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tries every host once, in order; the first that answers wins.
async fn connect_any(inner: &Inner) -> Result<(Connection, String), RpcError> {
    connect_broker(&inner.broker).await
}

/// Tries every host of `broker` once, in order; the first that answers wins.
pub(crate) async fn connect_broker(broker: &Broker) -> Result<(Connection, String), RpcError> {
    let mut errors = Vec::new();
    for host in &broker.hosts {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_host(host, broker)).await {
            Ok(Ok(connection)) => return Ok((connection, host.display())),
            Ok(Err(e)) => errors.push(format!("{}: {e}{}", host.display(), hint(broker, &e))),
            Err(_) => errors.push(format!(
                "{}: no answer within {CONNECT_TIMEOUT:?}",
                host.display()
            )),
        }
    }
    Err(RpcError::Transport(format!(
        "cannot connect to RabbitMQ: {}",
        errors.join("; ")
    )))
}

/// One TCP (+TLS) + AMQP connect.
async fn connect_host(host: &Host, broker: &Broker) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("navigator:{}", std::process::id()).into());
    let Some(tls) = &broker.tls else {
        return Connection::connect_uri(host.uri.clone(), properties).await;
    };
    // lapin's own TLS would trust the system's CAs besides ssl_ca_file and
    // take no protocol versions; this connects TCP with it and does the
    // handshake with the rustls configuration the options made.
    let connector = RustlsConnector::from(tls.config.clone());
    let name = host.uri.authority.host.clone();
    Connection::connector(
        host.uri.clone(),
        lapin::runtime::default_runtime()?,
        async move |uri: AMQPUri, runtime| {
            let tcp = AMQPUri {
                scheme: AMQPScheme::AMQP,
                ..uri
            };
            let stream = tcp
                .connect_with_config_async(TLSConfig::default(), &runtime)
                .await?;
            Ok(stream.into_rustls(&connector, &name).await?)
        },
        properties,
    )
    .await
}

/// A hint for the usual causes of a failed connect, after the error itself
/// (rustls's and lapin's texts name the symptom, not the option to fix).
fn hint(broker: &Broker, error: &lapin::Error) -> &'static str {
    let text = error.to_string();
    let tls = broker.tls.is_some();
    if tls && text.contains("UnknownIssuer") {
        " (the broker's certificate is not signed by a CA of [oslo_messaging_rabbit] ssl_ca_file, \
         or of the system when ssl_ca_file is unset)"
    } else if tls && text.contains("not valid for name") {
        " (the broker's certificate does not name the host of transport_url: use a name it has)"
    } else if tls && text.contains("invalid peer certificate") {
        " (the broker's certificate is not acceptable: check it and [oslo_messaging_rabbit] ssl_ca_file)"
    } else if tls && text.contains("CertificateRequired") {
        " (the broker requires a client certificate: set [oslo_messaging_rabbit] ssl_cert_file and ssl_key_file)"
    } else if tls && text.contains("alert") {
        " (the broker refused the TLS handshake: if it names the certificate, the broker does not \
         trust [oslo_messaging_rabbit] ssl_cert_file)"
    } else if tls && (text.contains("reset") || text.contains("EOF")) {
        // With TLS 1.3 the broker checks a client certificate after the
        // client's side of the handshake: its alert can lose the race with
        // the reset of the connection it closes.
        " (the broker closed the TLS connection: does it require a client certificate, or \
         refuse [oslo_messaging_rabbit] ssl_cert_file?)"
    } else if tls && (text.contains("corrupt message") || text.contains("InvalidContentType")) {
        " (the port did not answer TLS: is it the broker's plain AMQP port? TLS is usually 5671)"
    } else if !tls
        && ["parse", "reset", "EOF", "closed", "aborted"]
            .iter()
            .any(|symptom| text.contains(symptom))
    {
        " (the port did not answer AMQP: if it is the broker's TLS port, set \
         [oslo_messaging_rabbit] ssl = true or ?ssl=1 in transport_url)"
    } else {
        ""
    }
}

/// Connects and declares the exchange, the reply queue and every registered
/// listener, then makes the session current.
async fn open_session(inner: &Arc<Inner>) -> Result<Session, RpcError> {
    let (connection, host) = connect_any(inner).await?;
    let err = |what: &str| {
        let host = host.clone();
        let what = what.to_owned();
        move |e| transport_error(&host, &what, e)
    };
    let publish = connection
        .create_channel()
        .await
        .map_err(err("open channel"))?;
    let consume = connection
        .create_channel()
        .await
        .map_err(err("open channel"))?;
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(err("set prefetch"))?;
    publish
        .exchange_declare(
            inner.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err(&format!("declare exchange {}", inner.exchange)))?;
    consume
        .queue_declare(
            inner.reply_queue.as_str().into(),
            QueueDeclareOptions::default(),
            expiring_queue_args(),
        )
        .await
        .map_err(err(&format!("declare queue {}", inner.reply_queue)))?;
    let replies = consume
        .basic_consume(
            inner.reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err(&format!("consume {}", inner.reply_queue)))?;
    let session = Session {
        connection: Arc::new(connection),
        publish,
        consume,
        lost: Arc::new(Notify::new()),
        host,
    };
    watch_connection(inner, &session);
    lock(&inner.tasks).spawn(consume_replies(
        inner.clone(),
        replies,
        session.lost.clone(),
    ));
    let mut listeners = inner.listeners.lock().await;
    // Listeners whose receiver is gone need no queue any more.
    listeners.retain(|l| !l.sender.is_closed());
    for listener in listeners.iter() {
        declare_listener(inner, &session, listener).await?;
    }
    inner.session.send_replace(Some(session.clone()));
    drop(listeners);
    tracing::info!(host = %session.host, "connected to RabbitMQ");
    Ok(session)
}

/// Wakes the supervisor when lapin reports a connection error.
fn watch_connection(inner: &Inner, session: &Session) {
    let mut events = session.connection.events_listener();
    let lost = session.lost.clone();
    let host = session.host.clone();
    lock(&inner.tasks).spawn(async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                tracing::warn!(%host, error = %e, "RabbitMQ connection failed");
                lost.notify_one();
                return;
            }
        }
    });
}

/// Declares a listener's queue and binding and starts its consumer.
async fn declare_listener(
    inner: &Arc<Inner>,
    session: &Session,
    listener: &Listener,
) -> Result<(), RpcError> {
    let err = |what: String| {
        let host = session.host.clone();
        move |e| transport_error(&host, &what, e)
    };
    let channel = &session.consume;
    let queue = listener.queue.as_str();
    let topic = listener.target.topic.as_str();
    if listener.target.fanout {
        let exchange = format!("{topic}_fanout");
        declare_fanout_exchange(channel, &exchange)
            .await
            .map_err(err(format!("declare exchange {exchange}")))?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                expiring_queue_args(),
            )
            .await
            .map_err(err(format!("declare queue {queue}")))?;
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                topic.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err(format!("bind {queue} to {exchange}")))?;
    } else {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err(format!("declare queue {queue}")))?;
        channel
            .queue_bind(
                queue.into(),
                inner.exchange.as_str().into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err(format!("bind {queue} to {}", inner.exchange)))?;
    }
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err(format!("consume {queue}")))?;
    lock(&inner.tasks).spawn(consume_requests(
        inner.clone(),
        consumer,
        listener.sender.clone(),
        session.lost.clone(),
    ));
    Ok(())
}

async fn declare_fanout_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Reconnects whenever the current session is lost, forever.
async fn supervise(inner: Arc<Inner>, first: Session) {
    let mut session = first;
    loop {
        session.lost.notified().await;
        inner.session.send_replace(None);
        tracing::warn!(host = %session.host, "lost the RabbitMQ connection; reconnecting");
        let _ = session.connection.close(320, "reconnecting".into()).await;
        let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
        let mut delay = backoff.next_delay();
        session = loop {
            tokio::time::sleep(delay).await;
            match open_session(&inner).await {
                Ok(session) => break session,
                Err(e) => {
                    delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "RabbitMQ reconnect failed");
                }
            }
        };
        inner.reconnects.send_modify(|n| *n += 1);
    }
}

/// Hands requests from one queue to a listener, and sends the replies.
async fn consume_requests(
    inner: Arc<Inner>,
    mut consumer: Consumer,
    sender: mpsc::Sender<Incoming>,
    lost: Arc<Notify>,
) {
    let queue = consumer.queue().to_string();
    let mut seen: VecDeque<String> = VecDeque::with_capacity(DEDUP_WINDOW);
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "RabbitMQ consumer failed");
                break;
            }
        };
        // Acknowledged before the work, as oslo does: a request is run at
        // most once, and the periodic full sync repairs what a crash loses.
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            tracing::warn!(%queue, error = %e, "cannot acknowledge a message");
        }
        let request = match oslo::decode_request(&delivery.data) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "dropping an unreadable message");
                continue;
            }
        };
        if let Some(id) = &request.unique_id {
            if seen.contains(id) {
                tracing::debug!(%queue, unique_id = %id, "dropping a redelivered message");
                continue;
            }
            if seen.len() == DEDUP_WINDOW {
                seen.pop_front();
            }
            seen.push_back(id.clone());
        }
        let (reply, answer) = match request.reply_to {
            Some(_) => {
                let (reply, answer) = oneshot::channel();
                (Some(reply), Some(answer))
            }
            None => (None, None),
        };
        let incoming = Incoming {
            method: request.method.clone(),
            args: request.args,
            context: request.context,
            reply,
        };
        if sender.send(incoming).await.is_err() {
            // The listener is gone; stop consuming for it without touching
            // the connection.
            return;
        }
        if let (Some(reply_to), Some(answer)) = (request.reply_to, answer) {
            let reply = send_reply(inner.clone(), reply_to, request.method, answer);
            lock(&inner.tasks).spawn(reply);
        }
    }
    lost.notify_one();
}

async fn send_reply(
    inner: Arc<Inner>,
    reply_to: ReplyTo,
    method: String,
    answer: oneshot::Receiver<Result<Value, RemoteError>>,
) {
    let result = answer.await.unwrap_or_else(|_| {
        Err(RemoteError::new(
            "RuntimeError",
            format!("the listener dropped the call to {method}"),
        ))
    });
    let body = oslo::encode_reply(&reply_to.msg_id, &result);
    // Mandatory, as oslo: a reply to a caller that is gone comes back
    // instead of vanishing silently.
    if let Err(e) = publish(&inner, "", &reply_to.queue, &body, None, true, PUBLISH_WAIT).await {
        tracing::warn!(%method, reply_queue = %reply_to.queue, error = %e, "cannot send a reply");
    }
}

/// Completes calls with the replies on this transport's reply queue.
async fn consume_replies(inner: Arc<Inner>, mut consumer: Consumer, lost: Arc<Notify>) {
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) => {
                tracing::warn!(queue = %inner.reply_queue, error = %e, "RabbitMQ reply consumer failed");
                break;
            }
        };
        let reply = match oslo::decode_reply(&delivery.data) {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, "dropping an unreadable reply");
                continue;
            }
        };
        let mut pending = lock(&inner.pending);
        match reply.kind {
            ReplyKind::Heartbeat => {}
            ReplyKind::Partial(value) => {
                if let Some(call) = pending.get_mut(&reply.msg_id) {
                    call.partial = Some(value);
                }
            }
            ReplyKind::Done(result) => {
                // A late reply to a call that timed out finds nothing here.
                if let Some(call) = pending.remove(&reply.msg_id) {
                    let result = match (result, call.partial) {
                        (Ok(Value::Null), Some(partial)) => Ok(partial),
                        (result, _) => result,
                    };
                    let _ = call.reply.send(result);
                }
            }
        }
    }
    lost.notify_one();
}

/// Waits (up to `wait`) for a live connection and publishes one message.
#[allow(clippy::too_many_arguments)]
async fn publish(
    inner: &Inner,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    expiration: Option<Duration>,
    mandatory: bool,
    wait: Duration,
) -> Result<(), RpcError> {
    let mut sessions = inner.session.subscribe();
    let session = match tokio::time::timeout(wait, sessions.wait_for(Option::is_some)).await {
        Ok(Ok(session)) => session.clone(),
        _ => None,
    };
    let Some(session) = session else {
        return Err(RpcError::Transport(format!(
            "no RabbitMQ connection within {wait:?}"
        )));
    };
    let mut props = properties();
    if let Some(expiration) = expiration {
        // The broker drops a message nobody took in time: a call whose
        // caller has given up, or a heartbeat that says nothing about now.
        props = props.with_expiration(expiration.as_millis().to_string().as_str().into());
    }
    let options = BasicPublishOptions {
        mandatory,
        ..BasicPublishOptions::default()
    };
    let result = async {
        if exchange.ends_with("_fanout") {
            // Publishing to a missing exchange closes the channel; the
            // fanout one is auto-delete, so declare it first as oslo does.
            declare_fanout_exchange(&session.publish, exchange).await?;
        }
        session
            .publish
            .basic_publish(exchange.into(), routing_key.into(), options, body, props)
            .await?
            .await
    }
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            // A failed publish means a broken channel or connection: start over.
            session.lost.notify_one();
            Err(transport_error(&session.host, "publish", e))
        }
    }
}

/// Removes a call from the pending map however the call ends.
struct PendingGuard {
    inner: Arc<Inner>,
    msg_id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(&self.msg_id);
    }
}

impl AmqpTransport {
    /// Publishes a cast; with `ttl`, the broker drops it if nobody took it
    /// within that time (the message's `expiration`).
    async fn publish_cast(
        &self,
        target: Target,
        method: String,
        args: Value,
        ttl: Option<Duration>,
    ) -> Result<(), RpcError> {
        let (exchange, routing_key) = self.route(&target);
        let body = oslo::encode_request(&method, &args, None);
        // Like oslo, a cast nobody listens to is dropped by the broker (not
        // mandatory): agents recover through full syncs.
        publish(
            &self.inner,
            &exchange,
            &routing_key,
            &body,
            ttl,
            false,
            PUBLISH_WAIT,
        )
        .await
    }

    fn route(&self, target: &Target) -> (String, String) {
        if target.fanout {
            (format!("{}_fanout", target.topic), String::new())
        } else {
            (self.inner.exchange.clone(), target.to_string())
        }
    }
}

impl Transport for AmqpTransport {
    fn send_call(
        &self,
        target: &Target,
        method: &str,
        args: Value,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<PendingReply, RpcError>> {
        let target = target.clone();
        let method = method.to_owned();
        Box::pin(async move {
            if target.fanout {
                return Err(RpcError::Transport(format!(
                    "cannot call {method} on {target}: a fanout target takes casts only"
                )));
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let (exchange, routing_key) = self.route(&target);
            let reply_to = ReplyTo {
                msg_id: oslo::new_id(),
                queue: self.inner.reply_queue.clone(),
            };
            let (reply, answer) = oneshot::channel();
            lock(&self.inner.pending).insert(
                reply_to.msg_id.clone(),
                Pending {
                    reply,
                    partial: None,
                },
            );
            let guard = PendingGuard {
                inner: self.inner.clone(),
                msg_id: reply_to.msg_id.clone(),
            };
            let body = oslo::encode_request(&method, &args, Some(&reply_to));
            let published = tokio::time::timeout_at(
                deadline,
                publish(
                    &self.inner,
                    &exchange,
                    &routing_key,
                    &body,
                    Some(timeout),
                    false,
                    // Longer than the call's deadline, so that a broker
                    // outage ends in the Timeout, not another error.
                    timeout + Duration::from_secs(1),
                ),
            )
            .await;
            match published {
                Err(_) => return Err(call_timeout(&method, &target, timeout)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => {}
            }
            // The guard keeps the call in the pending map until it ends.
            Ok(pending_reply(
                method, target, timeout, deadline, answer, guard,
            ))
        })
    }

    fn cast(
        &self,
        target: &Target,
        method: &str,
        args: Value,
    ) -> BoxFuture<'_, Result<(), RpcError>> {
        Box::pin(self.publish_cast(target.clone(), method.to_owned(), args, None))
    }

    fn cast_expiring(
        &self,
        target: &Target,
        method: &str,
        args: Value,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RpcError>> {
        Box::pin(self.publish_cast(target.clone(), method.to_owned(), args, Some(ttl)))
    }

    fn listen(&self, target: &Target) -> BoxFuture<'_, Result<mpsc::Receiver<Incoming>, RpcError>> {
        let target = target.clone();
        Box::pin(async move {
            let queue = if target.fanout {
                format!("{}_fanout_{}", target.topic, self.inner.fanout_id)
            } else {
                target.to_string()
            };
            let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
            let listener = Listener {
                target,
                queue,
                sender,
            };
            let mut listeners = self.inner.listeners.lock().await;
            // Without a connection now, the next reconnect declares it.
            let session = self.inner.session.borrow().clone();
            if let Some(session) = session {
                declare_listener(&self.inner, &session, &listener).await?;
            }
            listeners.push(listener);
            Ok(receiver)
        })
    }

    fn reconnects(&self) -> Option<watch::Receiver<u64>> {
        Some(AmqpTransport::reconnects(self))
    }

    fn connected(&self) -> Option<bool> {
        Some(self.is_connected())
    }
}
