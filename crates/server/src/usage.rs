//! Usage of forwards (bytes, connections), read from the agents' data planes
//! when asked: by `GET /v1/forwards/{id}` and, with `[metrics] per_forward`,
//! by each scrape of `/metrics`. Nothing is stored: counters live in the data
//! plane and restart with it.
//!
//! Every call is bounded by [`USAGE_TIMEOUT`] (or the RPC timeout, if
//! shorter), so that a dead or slow agent costs a GET at most that long,
//! and every failure becomes a reason for people rather than an error.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use navigator_api::v1::Usage;
use navigator_core::{ForwardId, ForwardStatus, ForwardUsage, PortForward};
use navigator_rpc::{MAX_USAGE_IDS, RpcError, methods};

use crate::control::Control;

/// The longest a request waits for an agent's counters.
pub const USAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// The usage of one forward, or why there is none.
pub async fn forward_usage(control: &Control, forward: &PortForward) -> Result<Usage, String> {
    if forward.status != ForwardStatus::Active {
        // A PENDING forward may not be carried yet, an ERROR one is not; a
        // DELETING one is on its way out.
        return Err(format!(
            "the forward is {}: only an ACTIVE forward has usage",
            forward.status
        ));
    }
    // An address group's traffic goes through the member holding its
    // addresses: that one's counters are the forward's.
    let host = control.usage_host(&forward.proxy).await?;
    let mut usage = proxy_usage(control, &host, &[forward.id], USAGE_TIMEOUT).await?;
    match usage.remove(&forward.id) {
        Some(usage) => Ok(to_api(usage)),
        None => Err(format!(
            "the agent on {host} does not carry the forward (yet)"
        )),
    }
}

/// What the agent on `host` counted for `ids`, asked in calls of at most
/// [`MAX_USAGE_IDS`] ids, each within `timeout`; forwards it does not carry
/// are absent. `Err` says why nothing could be had.
pub async fn proxy_usage(
    control: &Control,
    host: &str,
    ids: &[ForwardId],
    timeout: Duration,
) -> Result<HashMap<ForwardId, ForwardUsage>, String> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(MAX_USAGE_IDS) {
        let asked: HashSet<ForwardId> = chunk.iter().copied().collect();
        let ids = chunk.iter().map(ToString::to_string).collect();
        let result = control.agents().get_usage(host, ids, timeout).await;
        control
            .metrics()
            .record_rpc(methods::GET_USAGE, result.is_ok());
        let reply = result.map_err(|e| why(host, &e))?;
        if let Some(reason) = reply.unavailable {
            return Err(reason);
        }
        for (id, entry) in reply.usage {
            // Only what was asked: an agent answering about other forwards
            // must not leak them into this answer.
            if let Ok(id) = id.parse::<ForwardId>()
                && asked.contains(&id)
            {
                found.insert(id, entry.into());
            }
        }
    }
    Ok(found)
}

/// A failed `get_usage` in words for the API's `usage_unavailable`.
fn why(host: &str, error: &RpcError) -> String {
    if error.is_no_such_method() {
        return format!("the agent on {host} is too old to report usage");
    }
    match error {
        RpcError::Timeout { after, .. } => {
            format!("the agent on {host} did not answer within {after:?}")
        }
        RpcError::NoListener { .. } => format!("the agent on {host} is not running"),
        other => format!("cannot get usage from the agent on {host}: {other}"),
    }
}

/// The API's shape: `last_connection_at` as RFC 3339.
pub fn to_api(usage: ForwardUsage) -> Usage {
    Usage {
        bytes_in: usage.bytes_in,
        bytes_out: usage.bytes_out,
        connections_total: usage.connections_total,
        connections_active: usage.connections_active,
        last_connection_at: usage.last_connection_at.and_then(|secs| {
            let secs = i64::try_from(secs).ok()?;
            chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_connection_is_rfc3339_utc() {
        let usage = to_api(ForwardUsage {
            bytes_in: 1,
            bytes_out: 2,
            connections_total: 3,
            connections_active: 0,
            last_connection_at: Some(1_700_000_000),
        });
        assert_eq!(
            usage.last_connection_at.as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            to_api(ForwardUsage::default()).last_connection_at,
            None::<String>
        );
        // Beyond what a date can hold: no date rather than a panic.
        let far = to_api(ForwardUsage {
            last_connection_at: Some(u64::MAX),
            ..ForwardUsage::default()
        });
        assert_eq!(far.last_connection_at, None);
    }

    #[test]
    fn reasons_name_the_host() {
        let old = RpcError::Remote {
            method: "get_usage".into(),
            target: "navigator-proxy.p1".into(),
            source: navigator_rpc::RemoteError::new("NoSuchMethod", "no get_usage"),
        };
        assert_eq!(
            why("p1", &old),
            "the agent on p1 is too old to report usage"
        );
        let slow = RpcError::Timeout {
            method: "get_usage".into(),
            target: "navigator-proxy.p1".into(),
            after: Duration::from_secs(2),
        };
        assert_eq!(why("p1", &slow), "the agent on p1 did not answer within 2s");
    }
}
