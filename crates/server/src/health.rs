//! `GET /healthcheck`, after oslo.middleware's healthcheck: a load balancer
//! or monitor asks, anonymously, and gets `200 OK` or `503` with the names
//! of what failed.
//!
//! - `[healthcheck] disable_by_file_path`: while the file exists the answer
//!   is 503 `DISABLED BY FILE` (oslo's `disable_by_file` backend), so that a
//!   server can be drained before it is stopped or upgraded.
//! - Checks: the database (a `SELECT 1` on the pool) and, in cluster mode,
//!   RabbitMQ (the RPC connection's state; nothing is sent, no connection is
//!   made). Each is bounded by [`CHECK_TIMEOUT`], so a hung database makes the
//!   answer slow by at most that, never hangs the load balancer's probe.
//! - Anonymous callers never see an error text (hosts, users, paths, driver
//!   messages): only the failed check's name. The detailed answer (version,
//!   host, per check its duration and error) is for admins (a valid token
//!   passing `context_is_admin`) and callers on loopback, when
//!   `[healthcheck] detailed` is on or `?detailed=true` asks.
//! - Content negotiation as oslo: `text/plain` (`OK`, or one reason per
//!   line) when the caller prefers it in `Accept`; otherwise JSON
//!   ([`navigator_api::v1::Health`]), which existing clients expect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use navigator_api::v1::{Health, HealthCheckDetail};

use crate::app::AppState;

/// The longest one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// oslo.middleware's reason when the disable file exists.
pub const DISABLED_BY_FILE: &str = "DISABLED BY FILE";

/// `[healthcheck]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthcheckConfig {
    /// While this file exists, `/healthcheck` answers 503 (draining).
    pub disable_by_file_path: Option<PathBuf>,
    /// Give the detailed answer to admins and loopback callers unasked.
    pub detailed: bool,
}

/// The outcome of one check.
struct Outcome {
    name: &'static str,
    error: Option<String>,
    duration: Duration,
}

/// Runs `check` within [`CHECK_TIMEOUT`].
async fn timed<E: std::fmt::Display>(
    name: &'static str,
    check: impl std::future::Future<Output = Result<(), E>>,
) -> Outcome {
    let started = Instant::now();
    let error = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    Outcome {
        name,
        error,
        duration: started.elapsed(),
    }
}

/// The checks that apply to this server, run concurrently.
async fn run_checks(state: &AppState) -> Vec<Outcome> {
    let database = timed("database", state.control.store().ping());
    let rabbitmq = async {
        // Only a transport with a connection (RabbitMQ, cluster mode) has
        // something to check; in-process has none.
        let connected = state.control.transport().connected()?;
        Some(
            timed("rabbitmq", async move {
                if connected {
                    Ok(())
                } else {
                    Err("the RPC connection to RabbitMQ is down (reconnecting)")
                }
            })
            .await,
        )
    };
    let (database, rabbitmq) = tokio::join!(database, rabbitmq);
    std::iter::once(database).chain(rabbitmq).collect()
}

/// Whether the caller may see the detailed answer: on loopback, or an admin.
/// Only asked when a detailed answer would be given, so anonymous probes
/// never cost a Keystone validation.
async fn privileged(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    request_id: &str,
) -> bool {
    if peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) {
        return true;
    }
    if !state.auth.is_keystone() {
        // noauth: every caller is an admin (and noauth is served off
        // loopback only when forced).
        return true;
    }
    let Some(token) = headers
        .get("x-auth-token")
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    // A bad token or an unreachable Keystone is not an error here: the
    // caller just gets the short answer.
    match state.auth.authenticate(Some(token), request_id).await {
        Ok(identity) => state.auth.policy().check(
            "context_is_admin",
            &crate::auth::credentials(&identity),
            &[],
        ),
        Err(_) => false,
    }
}

/// Whether `Accept` prefers `text/plain` to JSON. No header, `*/*` or a tie
/// is JSON, the shape clients of earlier releases read.
pub fn prefers_text(headers: &HeaderMap) -> bool {
    let Some(accept) = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let (mut text, mut json, mut any) = (None::<f32>, None::<f32>, None::<f32>);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "text/plain" | "text/*" => &mut text,
            "application/json" | "application/*" => &mut json,
            "*/*" => &mut any,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }
    let text = text.or(any).unwrap_or(0.0);
    let json = json.or(any).unwrap_or(0.0);
    text > json
}

/// The answer to `GET /healthcheck`.
pub async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
    request_id: &str,
    asked_detailed: bool,
) -> Response {
    let config = &state.config.healthcheck;
    let disabled = config
        .disable_by_file_path
        .as_deref()
        .is_some_and(|path| path.exists());
    let outcomes = if disabled {
        // Draining: the answer is decided; the other checks would only add
        // load to a server on its way out.
        Vec::new()
    } else {
        run_checks(state).await
    };
    let mut checks = BTreeMap::new();
    let mut reasons = Vec::new();
    if disabled {
        reasons.push(DISABLED_BY_FILE.to_owned());
    }
    for outcome in &outcomes {
        let status = match &outcome.error {
            None => "ok",
            Some(error) => {
                // The cause goes to the log only, with the answer's id.
                tracing::warn!(request_id, check = outcome.name, %error, "healthcheck: {} unavailable", outcome.name);
                reasons.push(format!("{} unavailable", outcome.name));
                "unavailable"
            }
        };
        checks.insert(outcome.name.to_owned(), status.to_owned());
    }
    let healthy = reasons.is_empty();
    let detailed = (config.detailed || asked_detailed)
        && privileged(
            state,
            peer.map(|ConnectInfo(peer)| peer),
            headers,
            request_id,
        )
        .await;
    let mut body = Health {
        status: if disabled {
            "DISABLED"
        } else if healthy {
            "OK"
        } else {
            "DEGRADED"
        }
        .into(),
        checks,
        reasons,
        detailed,
        version: None,
        host: None,
        details: Vec::new(),
    };
    if detailed {
        body.version = Some(env!("CARGO_PKG_VERSION").to_owned());
        body.host = Some(state.config.host.clone());
        if disabled {
            body.details.push(HealthCheckDetail {
                name: "disable_by_file".into(),
                status: "disabled".into(),
                duration_ms: 0,
                error: config
                    .disable_by_file_path
                    .as_deref()
                    .map(|path| format!("{} exists", path.display())),
            });
        }
        body.details.extend(outcomes.into_iter().map(|outcome| {
            HealthCheckDetail {
                name: outcome.name.into(),
                status: if outcome.error.is_none() {
                    "ok"
                } else {
                    "unavailable"
                }
                .into(),
                duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
                error: outcome.error,
            }
        }));
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Probes and proxies must not serve a stale answer.
    let no_cache = (header::CACHE_CONTROL, "no-cache, no-store");
    if prefers_text(headers) {
        let mut text = if healthy {
            "OK".to_owned()
        } else {
            body.reasons.join("\n")
        };
        if detailed {
            for detail in &body.details {
                text.push_str(&format!(
                    "\n{}: {} in {} ms{}",
                    detail.name,
                    detail.status,
                    detail.duration_ms,
                    detail
                        .error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
        text.push('\n');
        (
            status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                no_cache,
            ],
            text,
        )
            .into_response()
    } else {
        (status, [no_cache], axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn json_unless_text_is_preferred() {
        assert!(!prefers_text(&HeaderMap::new()));
        assert!(!prefers_text(&accept("*/*")));
        assert!(!prefers_text(&accept("application/json")));
        assert!(!prefers_text(&accept("application/json, text/plain")));
        assert!(prefers_text(&accept("text/plain")));
        assert!(prefers_text(&accept("text/plain, */*;q=0.5")));
        assert!(prefers_text(&accept("application/json;q=0.4, text/*")));
        assert!(!prefers_text(&accept("text/plain;q=0.2, application/json")));
        assert!(!prefers_text(&accept("text/html")));
    }
}
