//! The request context that travels with RPC messages, as oslo.messaging
//! carries oslo.context's (flattened into `_context_*` keys): here only the
//! ids that let one API request be followed from the server's log into the
//! agent's, `request_id` and `global_request_id`.
//!
//! The server sets it for the work of one request with [`scope`]; messages
//! encoded inside that scope carry it, and [`crate::Incoming::context`]
//! hands it to the agent. Messages sent outside a request (heartbeats,
//! periodic syncs, failover) carry none. Older agents ignore the keys, as
//! oslo peers do with context keys they do not know.

use std::future::Future;

/// The ids of the request a message is sent for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The server's id of the API request (`req-<uuid>`).
    pub request_id: Option<String>,
    /// The caller's `X-OpenStack-Request-Id`, when it was a valid one.
    pub global_request_id: Option<String>,
}

impl RequestContext {
    /// Whether it names nothing.
    pub fn is_empty(&self) -> bool {
        self.request_id.is_none() && self.global_request_id.is_none()
    }
}

/// Whether `id` is `req-` and a UUID in lower-case hex with dashes: the only
/// request id oslo.middleware accepts from a caller (anything else could
/// forge log lines or carry a payload into every service's logs).
pub fn is_valid_request_id(id: &str) -> bool {
    let Some(uuid) = id.strip_prefix("req-") else {
        return false;
    };
    let groups: Vec<&str> = uuid.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| {
            group.len() == len
                && group
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// Runs `work` with `context` as the context of the messages it sends.
pub async fn scope<F: Future>(context: RequestContext, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// The context of the request being worked on, empty outside [`scope`].
pub fn current() -> RequestContext {
    CURRENT.try_with(Clone::clone).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_follow_oslo() {
        assert!(is_valid_request_id(
            "req-0a1b2c3d-4e5f-6789-abcd-ef0123456789"
        ));
        for bad in [
            "",
            "req-",
            "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            "req-0A1B2C3D-4E5F-6789-ABCD-EF0123456789",
            "req-0a1b2c3d4e5f6789abcdef0123456789",
            "req-0a1b2c3d-4e5f-6789-abcd-ef0123456789x",
            "req-0a1b2c3d-4e5f-6789-abcd-ef012345678g",
            "req-{0a1b2c3d-4e5f-6789-abcd-ef0123456789}",
            "req-0a1b2c3d-4e5f-6789-abcd-ef0123456789\nFAKE",
        ] {
            assert!(!is_valid_request_id(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn scoped_and_empty_outside() {
        assert!(current().is_empty());
        let context = RequestContext {
            request_id: Some("req-1".into()),
            global_request_id: None,
        };
        let seen = scope(context.clone(), async { current() }).await;
        assert_eq!(seen, context);
        assert!(current().is_empty());
    }
}
