//! Listening to another service's oslo notifications (Nova's, for Navigator)
//! on a queue of our own, the way oslo's notification listener with a `pool`
//! does: the shared `<topic>.info` queues belong to whoever else consumes them
//! (Ceilometer, ...), so a competing consumer there would steal their messages.
//!
//! - The service's exchange (`nova`) is declared **passively**: it is Nova's,
//!   and its flags (durable or not, quorum queues) are Nova's deployment
//!   choice; declaring it with other flags would close our channel, and
//!   creating it would hide a misconfiguration. While it is absent the
//!   listener says so and retries with backoff; it never gives up.
//! - Our queue is **durable**, so deletions published while every server is
//!   down wait for the next one. Several servers consume it as competing
//!   consumers: each message is handled once in the normal case, and the
//!   handler must be idempotent for redeliveries.
//! - A message is acknowledged after the handler returns (at-least-once);
//!   an unreadable one is logged and acknowledged, never requeued.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use navigator_core::Backoff;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::amqp::connect_broker;
use crate::broker::{Broker, RabbitOptions};
use crate::oslo::{Notification, decode_notification};
use crate::transport::RpcError;

/// Where notifications come from and which queue collects them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationSource {
    /// `rabbit://...` of the broker the notifier publishes to.
    pub transport_url: String,
    /// `[oslo_messaging_rabbit]` (TLS), which the URL's query overrides.
    pub rabbit: RabbitOptions,
    /// The notifier's exchange (its `control_exchange`, `nova` for Nova).
    pub exchange: String,
    /// Notification topics; each is bound as `<topic>.info`.
    pub topics: Vec<String>,
    /// Our own durable queue.
    pub queue: String,
}

/// Unacknowledged notifications in flight per listener.
const PREFETCH: u16 = 16;
/// Reconnect and "exchange absent" backoff (jittered,
/// `navigator_core::Backoff`): first delay and cap. The cap is
/// short because a deleted instance's forwards should go soon after Nova
/// appears, and a retry costs the broker one passive declare.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A running listener; dropping it stops it.
pub struct NotificationListener {
    task: JoinHandle<()>,
    consuming: watch::Receiver<bool>,
}

impl NotificationListener {
    /// Starts listening. `handle` is awaited for every readable notification
    /// (of any event type) before that message is acknowledged. Fails only
    /// on a malformed `transport_url` or TLS option (a file that cannot be
    /// read, ...); broker trouble is retried forever.
    pub fn spawn<H, F>(
        source: NotificationSource,
        handle: H,
    ) -> Result<NotificationListener, RpcError>
    where
        H: Fn(Notification) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let broker = Broker::new(&source.transport_url, &source.rabbit)?;
        if source.topics.is_empty() {
            return Err(RpcError::Transport(
                "notification listener needs at least one topic".into(),
            ));
        }
        let (consuming_tx, consuming) = watch::channel(false);
        broker.log_link("Nova notifications");
        let listener = Listener {
            broker,
            source,
            handle,
            consuming: consuming_tx,
        };
        let task = tokio::spawn(listener.run());
        Ok(NotificationListener { task, consuming })
    }

    /// True while the queue is declared, bound and consumed.
    pub fn consuming(&self) -> watch::Receiver<bool> {
        self.consuming.clone()
    }

    /// Stops the listener; a message being handled is not acknowledged and
    /// will be delivered again (to this or another server).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for NotificationListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why one connection's session ended.
enum Ended {
    /// Could not connect, or the connection broke.
    Broker(String),
    /// The notifier's exchange does not exist (yet).
    NoExchange(String),
}

/// The listener's task and what each of its connections needs.
struct Listener<H> {
    broker: Broker,
    source: NotificationSource,
    handle: H,
    /// Set while the queue is consumed ([`NotificationListener::consuming`]).
    consuming: watch::Sender<bool>,
}

impl<H, F> Listener<H>
where
    H: Fn(Notification) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    async fn run(self) {
        let source = &self.source;
        let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
        loop {
            let ended = self.session().await;
            let was_consuming = self.consuming.send_replace(false);
            if was_consuming {
                // It worked until now: come back quickly.
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match ended {
                Ended::Broker(e) => tracing::warn!(
                    exchange = %source.exchange, queue = %source.queue, error = %e, retry_in = ?delay,
                    "notification listener: RabbitMQ unavailable; retrying"
                ),
                Ended::NoExchange(broker) => tracing::warn!(
                    exchange = %source.exchange, %broker, retry_in = ?delay,
                    "notification listener: exchange {:?} does not exist on {broker}; is the notifier \
                     configured there ([oslo_messaging_notifications] driver = messagingv2 and this \
                     transport_url)? Navigator never creates it; retrying",
                    source.exchange
                ),
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection: declare, bind, consume until the connection ends.
    async fn session(&self) -> Ended {
        let (connection, broker) = match connect_broker(&self.broker).await {
            Ok(connected) => connected,
            Err(e) => return Ended::Broker(e.to_string()),
        };
        let ended = self.consume(&connection, &broker).await;
        let _ = connection.close(200, "OK".into()).await;
        ended
    }

    async fn consume(&self, connection: &Connection, broker: &str) -> Ended {
        let source = &self.source;
        let failed =
            |what: String| move |e: lapin::Error| Ended::Broker(format!("{broker}: {what}: {e}"));
        let channel = match connection.create_channel().await {
            Ok(channel) => channel,
            Err(e) => return failed("open channel".into())(e),
        };
        let passive = channel
            .exchange_declare(
                source.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        if let Err(e) = passive {
            // A passive declare of a missing exchange closes the channel with
            // 404 NOT_FOUND; anything else is a broker problem.
            return if e.to_string().contains("NOT_FOUND") || e.to_string().contains("404") {
                Ended::NoExchange(broker.to_owned())
            } else {
                failed(format!("declare exchange {} passively", source.exchange))(e)
            };
        }
        if let Err(e) = channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
        {
            return failed("set prefetch".into())(e);
        }
        if let Err(e) = channel
            .queue_declare(
                source.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
        {
            return failed(format!("declare queue {}", source.queue))(e);
        }
        for topic in &source.topics {
            let key = format!("{topic}.info");
            if let Err(e) = channel
                .queue_bind(
                    source.queue.as_str().into(),
                    source.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                return failed(format!(
                    "bind {} to {} with {key}",
                    source.queue, source.exchange
                ))(e);
            }
        }
        let mut consumer = match channel
            .basic_consume(
                source.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => return failed(format!("consume {}", source.queue))(e),
        };
        self.consuming.send_replace(true);
        tracing::info!(
            %broker, exchange = %source.exchange, queue = %source.queue, topics = ?source.topics,
            "listening to notifications"
        );
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(e) => return failed(format!("consume {}", source.queue))(e),
            };
            match decode_notification(&delivery.data) {
                Ok(notification) => (self.handle)(notification).await,
                Err(e) => tracing::warn!(
                    queue = %source.queue, error = %e, body = %preview(&delivery.data),
                    "dropping an unreadable notification"
                ),
            }
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                return failed("acknowledge a notification".into())(e);
            }
        }
        Ended::Broker(format!("{broker}: the consumer of {} ended", source.queue))
    }
}

/// The start of a body, for a log line about it.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    if body.len() > 200 {
        format!("{text}...")
    } else {
        text.into_owned()
    }
}
