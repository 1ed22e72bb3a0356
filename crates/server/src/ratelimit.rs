//! Per-client rate limiting of the API (`[api] rate_limit`,
//! `rate_limit_burst`): a GCRA bucket per client address (`governor`), so one
//! client's flood is answered 429 with `Retry-After` while others are served.
//!
//! - The client is the TCP peer the listener recorded (`ConnectInfo`, see
//!   [`crate::http`]); an IPv6 client is its /64, since one host usually
//!   has a whole /64 to pick addresses from. Requests without a peer (in
//!   process: the dashboard's calls to the REST router, tests) are not
//!   limited: the dashboard's own request from the browser already was.
//! - `/healthcheck` and `/metrics` draw from a second, separate budget of
//!   the same size, so that an API flood from a monitor's address (a NAT, a
//!   load balancer) does not make its checks fail and page someone.
//! - The keyed state stays bounded: buckets back to full are dropped every
//!   [`SWEEP_EVERY`], and past [`MAX_CLIENTS`] tracked clients the state
//!   starts afresh (an attacker with that many addresses has that many
//!   budgets anyway).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

/// How often buckets back to full are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Clients tracked at most per budget (about 100 bytes each).
const MAX_CLIENTS: usize = 100_000;

/// Paths with their own budget: what monitoring polls.
fn is_monitoring(path: &str) -> bool {
    matches!(path, "/healthcheck" | "/metrics")
}

/// The two budgets of one server.
pub struct RateLimit {
    quota: Quota,
    api: RwLock<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    monitoring: RwLock<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    last_sweep_ms: AtomicU64,
    clock: DefaultClock,
}

impl RateLimit {
    /// `None` when `rate` is 0 (off).
    pub fn new(rate: u32, burst: u32) -> Option<Arc<RateLimit>> {
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Arc::new(RateLimit {
            quota,
            api: RwLock::new(Arc::new(DefaultKeyedRateLimiter::keyed(quota))),
            monitoring: RwLock::new(Arc::new(DefaultKeyedRateLimiter::keyed(quota))),
            last_sweep_ms: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }))
    }

    /// `Err(wait)` when `client` must wait before its next request to `path`.
    pub fn check(&self, client: IpAddr, path: &str) -> Result<(), Duration> {
        self.sweep_now_and_then();
        let budget = if is_monitoring(path) {
            &self.monitoring
        } else {
            &self.api
        };
        let limiter = Arc::clone(&budget.read().unwrap_or_else(PoisonError::into_inner));
        limiter
            .check_key(&key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets full buckets every [`SWEEP_EVERY`], on the request that finds
    /// it due (O(clients), a few ms at the cap), and starts afresh past
    /// [`MAX_CLIENTS`].
    fn sweep_now_and_then(&self) {
        static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for budget in [&self.api, &self.monitoring] {
            let limiter = Arc::clone(&budget.read().unwrap_or_else(PoisonError::into_inner));
            limiter.retain_recent();
            if limiter.len() > MAX_CLIENTS {
                tracing::warn!(
                    clients = limiter.len(),
                    "rate limiter tracks more than {MAX_CLIENTS} client addresses; starting afresh"
                );
                *budget.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(DefaultKeyedRateLimiter::keyed(self.quota));
            } else {
                limiter.shrink_to_fit();
            }
        }
    }

    /// Clients tracked now (both budgets).
    pub fn tracked(&self) -> usize {
        [&self.api, &self.monitoring]
            .iter()
            .map(|b| b.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// The bucket of `ip`: IPv4 (also IPv4-mapped IPv6) by address, IPv6 by /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// The middleware: 429 with `Retry-After` over the budget.
pub async fn limit(State(limit): State<Arc<RateLimit>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if let Some(ip) = peer
        && let Err(wait) = limit.check(ip, request.uri().path())
    {
        tracing::debug!(client = %ip, path = request.uri().path(), ?wait, "rate limited");
        return ApiError::TooManyRequests {
            message: "too many requests from this address ([api] rate_limit); retry after the time in Retry-After".into(),
            retry_after: wait,
        }
        .into_response();
    }
    next.run(request).await
}

/// Documents the 429 answer on every operation of the OpenAPI document, as
/// a shared `components.responses` entry with its `Retry-After` header.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::Header;
    use utoipa::openapi::{ObjectBuilder, Type};
    let mut header = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
    header.description = Some("Seconds to wait before the next request is accepted.".to_owned());
    crate::openapi_auth::add_error_everywhere(
        doc,
        "429",
        "TooManyRequests",
        "Too many requests from this client address ([api] rate_limit, rate_limit_burst); \
         retry after Retry-After seconds. Nothing was changed.",
        vec![("Retry-After", header)],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_ipv6_by_64_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_burst_beyond_the_budget_waits_and_monitoring_has_its_own() {
        let limit = RateLimit::new(1, 3).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.check(ip, "/v1/forwards").is_ok());
        }
        let wait = limit.check(ip, "/v1/forwards").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check(ip, "/healthcheck").is_ok());
        assert!(
            limit
                .check("192.0.2.2".parse().unwrap(), "/v1/forwards")
                .is_ok()
        );
        assert!(RateLimit::new(0, 10).is_none());
        assert_eq!(limit.tracked(), 3);
    }

    #[test]
    fn every_operation_documents_429() {
        let json = serde_json::to_value(crate::app::openapi()).unwrap();
        let answer = &json["components"]["responses"]["TooManyRequests"];
        assert!(answer["headers"]["Retry-After"].is_object(), "{answer}");
        let mut checked = 0;
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                assert!(
                    operation["responses"].get("429").is_some(),
                    "{method} {path}: no 429"
                );
                checked += 1;
            }
        }
        assert!(checked >= 11, "{checked}");
    }
}
