//! Reacting to Nova: when an instance is deleted, its forwards go too (or
//! are marked `ERROR`, by `[nova] on_instance_delete`), so that a port does
//! not keep pointing at an address Neutron may hand to someone else.
//!
//! Nova announces deletions with `instance.delete.end`, in one or both of two
//! shapes depending on its `[notifications] notification_format`:
//! - versioned, topic `versioned_notifications`: event type
//!   `instance.delete.end`, the id in `payload["nova_object.data"]["uuid"]`;
//! - legacy, topic `notifications`: event type `compute.instance.delete.end`,
//!   the id in `payload["instance_id"]`.
//!
//! Both may arrive for one deletion, and several servers share the queue, so
//! everything here is idempotent: a forward already gone (or already marked)
//! is skipped. The event is recognised by its type, never by its publisher
//! (nova-api sends it too when the compute host is down). Forwards are found
//! by instance id, not by address: the addresses are already released when
//! the notification is sent.

use std::sync::Arc;
use std::time::Duration;

use navigator_core::{Backoff, PortForward};
use navigator_rpc::{Notification, NotificationListener, NotificationSource, RpcError};
use serde_json::Value;

use crate::config::{NovaConfig, OnInstanceDelete};
use crate::control::Control;
use crate::error::ApiError;

/// The user named in audit lines of changes made on Nova's behalf.
pub const AUDIT_USER: &str = "nova-notification";

/// Event types that mean "this instance is gone".
const DELETE_EVENTS: [&str; 2] = ["instance.delete.end", "compute.instance.delete.end"];

/// How often a deletion is tried when the store fails, the first pause and
/// the longest (jittered, `navigator_core::Backoff`: the servers that each
/// got a deletion while the database was away do not retry together).
const ATTEMPTS: u32 = 5;
const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(4);

/// What a notification means to Navigator.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    InstanceDeleted {
        instance_id: String,
    },
    /// Another event type: none of Navigator's business.
    Ignored,
    /// A delete event without a usable instance id.
    Malformed(String),
}

/// Reads a notification.
pub fn classify(notification: &Notification) -> Event {
    if !DELETE_EVENTS.contains(&notification.event_type.as_str()) {
        return Event::Ignored;
    }
    let payload = &notification.payload;
    let id = payload
        .get("nova_object.data")
        .and_then(|data| data.get("uuid"))
        .or_else(|| payload.get("instance_id"));
    match id {
        Some(Value::String(id)) if !id.trim().is_empty() && id.len() <= 255 => {
            Event::InstanceDeleted {
                instance_id: id.clone(),
            }
        }
        Some(other) => Event::Malformed(format!(
            "{}: instance id {other} is not a non-empty string of at most 255 characters",
            notification.event_type
        )),
        None => Event::Malformed(format!(
            "{}: no payload[\"nova_object.data\"][\"uuid\"] (versioned) nor payload[\"instance_id\"] (legacy)",
            notification.event_type
        )),
    }
}

/// Starts listening when `[nova] notifications` is on.
pub fn start(
    control: Arc<Control>,
    config: &NovaConfig,
) -> Result<Option<NotificationListener>, RpcError> {
    let Some(transport_url) = config
        .transport_url
        .clone()
        .filter(|_| config.notifications)
    else {
        return Ok(None);
    };
    let source = NotificationSource {
        transport_url,
        rabbit: config.rabbit.clone(),
        exchange: config.exchange.clone(),
        topics: config.topics.clone(),
        queue: config.queue.clone(),
    };
    let action = config.on_instance_delete;
    let listener = NotificationListener::spawn(source, move |notification| {
        let control = control.clone();
        async move { handle(&control, action, &notification).await }
    })?;
    Ok(Some(listener))
}

/// Acts on one notification; never fails (the message is acknowledged
/// afterwards either way, so that a bad one cannot come back forever).
pub async fn handle(control: &Control, action: OnInstanceDelete, notification: &Notification) {
    let message_id = notification.message_id.as_deref().unwrap_or("-");
    let instance_id = match classify(notification) {
        Event::Ignored => {
            tracing::debug!(event_type = %notification.event_type, message_id, "ignoring a notification");
            return;
        }
        Event::Malformed(why) => {
            tracing::warn!(message_id, publisher = ?notification.publisher_id, "ignoring a malformed notification: {why}");
            return;
        }
        Event::InstanceDeleted { instance_id } => instance_id,
    };
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    for attempt in 1..=ATTEMPTS {
        match instance_deleted(control, action, &instance_id, &request_id).await {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                let delay = backoff.next_delay();
                tracing::warn!(%instance_id, message_id, error = %e, retry_in = ?delay, "cannot act on a deleted instance yet");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::error!(
                    %instance_id, message_id, error = %e,
                    "giving up on the forwards of a deleted instance; delete them with `navigator forward list --instance-id {instance_id}`"
                );
            }
        }
    }
}

/// Deletes or marks every forward of `instance_id`. Safe to repeat.
async fn instance_deleted(
    control: &Control,
    action: OnInstanceDelete,
    instance_id: &str,
    request_id: &str,
) -> Result<(), ApiError> {
    let forwards = control.store().forwards_of_instance(instance_id).await?;
    if forwards.is_empty() {
        tracing::debug!(%instance_id, "deleted instance had no forwards");
        return Ok(());
    }
    for forward in &forwards {
        let (action_name, result) = match action {
            OnInstanceDelete::Delete => ("forward.delete", control.delete(forward).await),
            OnInstanceDelete::Mark => {
                let reason = format!(
                    "{}{instance_id} (Nova instance.delete.end); the proxy no longer carries this forward: delete it or point it at another instance",
                    navigator_store::INSTANCE_DELETED
                );
                (
                    "forward.mark_instance_deleted",
                    control.mark_instance_deleted(forward, &reason).await,
                )
            }
        };
        let outcome = match &result {
            Ok(true) => "success".to_owned(),
            // Another server (or the other notification format) was first.
            Ok(false) => "success: already done".to_owned(),
            Err(e) => format!("failure: {e}"),
        };
        audit(request_id, forward, instance_id, action_name, &outcome);
        result?;
    }
    Ok(())
}

/// The same audit line as an API mutation (`handlers`), with Nova as the user.
fn audit(request_id: &str, forward: &PortForward, instance_id: &str, action: &str, outcome: &str) {
    tracing::info!(
        target: "navigator::audit",
        request_id,
        user = AUDIT_USER,
        project = %forward.project_id,
        action,
        target_id = %forward.id,
        instance_id,
        outcome,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(event_type: &str, payload: Value) -> Notification {
        Notification {
            event_type: event_type.into(),
            publisher_id: Some("nova-compute:compute".into()),
            message_id: None,
            priority: Some("INFO".into()),
            payload,
        }
    }

    #[test]
    fn reads_both_formats_and_ignores_other_events() {
        let versioned = notification(
            "instance.delete.end",
            serde_json::json!({"nova_object.data": {"uuid": "178b0921-8f85-4257-88b6-2e743b5a975c"}}),
        );
        let legacy = notification(
            "compute.instance.delete.end",
            serde_json::json!({"instance_id": "178b0921-8f85-4257-88b6-2e743b5a975c", "state": "deleted"}),
        );
        for n in [versioned, legacy] {
            assert_eq!(
                classify(&n),
                Event::InstanceDeleted {
                    instance_id: "178b0921-8f85-4257-88b6-2e743b5a975c".into()
                }
            );
        }
        let other = notification(
            "instance.delete.start",
            serde_json::json!({"nova_object.data": {"uuid": "x"}}),
        );
        assert_eq!(classify(&other), Event::Ignored);
        for payload in [
            serde_json::json!({}),
            Value::Null,
            serde_json::json!({"instance_id": 7}),
            serde_json::json!({"instance_id": " "}),
        ] {
            assert!(
                matches!(
                    classify(&notification("instance.delete.end", payload)),
                    Event::Malformed(_)
                ),
                "malformed"
            );
        }
    }

    #[test]
    fn the_reference_samples_name_their_instance() {
        let versioned: Value =
            serde_json::from_str(include_str!("../tests/data/nova-instance-delete-end.json"))
                .unwrap();
        let n = notification(
            versioned["event_type"].as_str().unwrap(),
            versioned["payload"].clone(),
        );
        assert!(matches!(classify(&n), Event::InstanceDeleted { .. }));
    }
}
