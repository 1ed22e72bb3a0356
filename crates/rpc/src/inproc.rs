//! The in-process transport of the all-in-one mode: listeners are channels in
//! one process, with the same call/cast/fanout semantics as RabbitMQ.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::transport::{
    BoxFuture, Incoming, PendingReply, RpcError, Target, Transport, call_timeout, pending_reply,
};

/// Depth of each listener's queue; a slow listener makes senders wait rather
/// than buffer without bound.
const QUEUE_DEPTH: usize = 1024;

/// Listeners by `(topic, server)`.
type Listeners = HashMap<(String, Option<String>), Vec<mpsc::Sender<Incoming>>>;

#[derive(Default)]
pub struct InProcTransport {
    // A std mutex is enough: it is never held across an await.
    listeners: Mutex<Listeners>,
    next: AtomicUsize,
}

impl InProcTransport {
    pub fn new() -> InProcTransport {
        InProcTransport::default()
    }

    /// The live senders for a target, dropping those whose listener is gone.
    fn senders(&self, target: &Target) -> Vec<mpsc::Sender<Incoming>> {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = Vec::new();
        let keys: Vec<_> = if target.fanout {
            listeners
                .keys()
                .filter(|(topic, _)| *topic == target.topic)
                .cloned()
                .collect()
        } else {
            vec![(target.topic.clone(), target.server.clone())]
        };
        for key in keys {
            if let Some(senders) = listeners.get_mut(&key) {
                senders.retain(|s| !s.is_closed());
                out.extend(senders.iter().cloned());
            }
        }
        out
    }

    fn pick_one(&self, target: &Target) -> Result<mpsc::Sender<Incoming>, RpcError> {
        let senders = self.senders(target);
        if senders.is_empty() {
            return Err(RpcError::NoListener {
                target: target.to_string(),
            });
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % senders.len();
        Ok(senders[n].clone())
    }
}

impl Transport for InProcTransport {
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
            let deadline = tokio::time::Instant::now() + timeout;
            let sender = self.pick_one(&target)?;
            let (reply, answer) = oneshot::channel();
            let incoming = Incoming {
                method: method.clone(),
                args,
                context: crate::context::current(),
                reply: Some(reply),
            };
            match tokio::time::timeout_at(deadline, sender.send(incoming)).await {
                Err(_) => return Err(call_timeout(&method, &target, timeout)),
                Ok(Err(_)) => {
                    return Err(RpcError::NoListener {
                        target: target.to_string(),
                    });
                }
                Ok(Ok(())) => {}
            }
            Ok(pending_reply(method, target, timeout, deadline, answer, ()))
        })
    }

    fn cast(
        &self,
        target: &Target,
        method: &str,
        args: Value,
    ) -> BoxFuture<'_, Result<(), RpcError>> {
        let target = target.clone();
        let method = method.to_owned();
        Box::pin(async move {
            let senders = if target.fanout {
                self.senders(&target)
            } else {
                vec![self.pick_one(&target)?]
            };
            // Like a cast over RabbitMQ, nobody listening is not an error.
            for sender in senders {
                let incoming = Incoming {
                    method: method.clone(),
                    args: args.clone(),
                    context: crate::context::current(),
                    reply: None,
                };
                let _ = sender.send(incoming).await;
            }
            Ok(())
        })
    }

    fn listen(&self, target: &Target) -> BoxFuture<'_, Result<mpsc::Receiver<Incoming>, RpcError>> {
        let key = (target.topic.clone(), target.server.clone());
        Box::pin(async move {
            let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
            let mut listeners = self
                .listeners
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            listeners.entry(key).or_default().push(sender);
            Ok(receiver)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::RemoteError;

    #[tokio::test]
    async fn call_reaches_the_named_host_and_returns_its_reply() {
        let transport = InProcTransport::new();
        let mut agent_a = transport.listen(&Target::host("t", "a")).await.unwrap();
        let _agent_b = transport.listen(&Target::host("t", "b")).await.unwrap();
        tokio::spawn(async move {
            while let Some(msg) = agent_a.recv().await {
                let answer = if msg.method == "fail" {
                    Err(RemoteError::new("RuntimeError", "boom"))
                } else {
                    Ok(serde_json::json!({"echo": msg.args}))
                };
                if let Some(reply) = msg.reply {
                    let _ = reply.send(answer);
                }
            }
        });
        let reply = transport
            .call(
                &Target::host("t", "a"),
                "echo",
                serde_json::json!(1),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(reply, serde_json::json!({"echo": 1}));
        let err = transport
            .call(
                &Target::host("t", "a"),
                "fail",
                Value::Null,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "fail failed on t.a: RuntimeError: boom");
    }

    #[tokio::test]
    async fn sent_calls_arrive_in_order_and_their_replies_come_later() {
        let transport = InProcTransport::new();
        let mut agent = transport.listen(&Target::host("t", "a")).await.unwrap();
        let target = Target::host("t", "a");
        let timeout = Duration::from_secs(5);
        let first = transport
            .send_call(&target, "first", Value::Null, timeout)
            .await
            .unwrap();
        let second = transport
            .send_call(&target, "second", Value::Null, timeout)
            .await
            .unwrap();
        // Both are sent before either is answered, and arrive in order.
        let a = agent.recv().await.unwrap();
        let b = agent.recv().await.unwrap();
        assert_eq!((a.method.as_str(), b.method.as_str()), ("first", "second"));
        b.reply.unwrap().send(Ok(serde_json::json!(2))).unwrap();
        assert_eq!(second.await.unwrap(), serde_json::json!(2));
        a.reply.unwrap().send(Ok(serde_json::json!(1))).unwrap();
        assert_eq!(first.await.unwrap(), serde_json::json!(1));
    }

    #[tokio::test(start_paused = true)]
    async fn call_times_out_when_the_listener_does_not_answer() {
        let transport = InProcTransport::new();
        let _silent = transport.listen(&Target::host("t", "a")).await.unwrap();
        let err = transport
            .call(
                &Target::host("t", "a"),
                "m",
                Value::Null,
                Duration::from_secs(3),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
        let err = transport
            .call(
                &Target::host("t", "nobody"),
                "m",
                Value::Null,
                Duration::from_secs(3),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::NoListener { .. }), "{err}");
    }

    #[tokio::test]
    async fn fanout_cast_reaches_every_listener_of_the_topic() {
        let transport = InProcTransport::new();
        let mut a = transport.listen(&Target::host("t", "a")).await.unwrap();
        let mut b = transport.listen(&Target::host("t", "b")).await.unwrap();
        let fanout = Target {
            fanout: true,
            ..Target::topic("t")
        };
        transport.cast(&fanout, "hello", Value::Null).await.unwrap();
        assert_eq!(a.recv().await.unwrap().method, "hello");
        assert_eq!(b.recv().await.unwrap().method, "hello");
    }
}
