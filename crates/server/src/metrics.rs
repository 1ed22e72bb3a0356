//! `GET /metrics`: the server's counters in the Prometheus text exposition
//! format (version 0.0.4).
//!
//! The encoder is hand-rolled: the server exposes a handful of counters and one
//! histogram, which does not justify a metrics framework in the build. Counters
//! live in memory, per server process (Prometheus sums them across servers);
//! the forward and proxy gauges are read from the store at scrape time, so
//! every server reports the same cluster-wide values.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use navigator_core::{ForwardStatus, Protocol};

use crate::app::AppState;
use crate::control::is_up;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Route label of requests no route matched, so that scanners probing random
/// paths cannot create one time series per path.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Label of any method outside RFC 9110's (and PATCH), since HTTP allows any
/// token as a method and each would otherwise be a new series; and of a
/// status code outside 100-599.
const OTHER: &str = "other";

/// The method label: one of nine, or [`OTHER`].
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => OTHER,
    }
}

/// The status label: the code when it is one HTTP defines a class for
/// (100-599), else 0, shown as `other` (`StatusCode` admits up to 999).
fn status_label(status: u16) -> u16 {
    if (100..=599).contains(&status) {
        status
    } else {
        0
    }
}

#[derive(Default)]
struct Histogram {
    /// Observations per bucket of [`LATENCY_BUCKETS`], not cumulative; the
    /// last slot counts those above every bound.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Default)]
struct RpcCounts {
    calls: u64,
    failures: u64,
}

/// The server's in-process counters.
#[derive(Default)]
pub struct Metrics {
    /// By (route template, method label, status label). Every label is
    /// bounded: routes are templates or `unmatched`, methods one of ten,
    /// statuses 100-599 or `other`.
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
    /// By (route template, method label).
    latency: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    /// By RPC method name.
    rpc: Mutex<BTreeMap<&'static str, RpcCounts>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay usable after a panic elsewhere: they hold no invariant
    // that a half-done update could break.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// Counts one HTTP request; `route` must be a template or `unmatched`,
    /// `method` a [`method_label`].
    pub fn record_request(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        *lock(&self.requests)
            .entry((route.to_owned(), method, status_label(status)))
            .or_default() += 1;
        lock(&self.latency)
            .entry((route.to_owned(), method))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one RPC call to an agent (`method` as in `navigator_rpc::methods`).
    pub fn record_rpc(&self, method: &'static str, ok: bool) {
        let mut rpc = lock(&self.rpc);
        let counts = rpc.entry(method).or_default();
        counts.calls += 1;
        if !ok {
            counts.failures += 1;
        }
    }

    /// Encodes the counters, then the store-derived gauges in `snapshot`.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        self.encode_counters(&mut out);
        snapshot.encode(&mut out);
        out
    }

    fn encode_counters(&self, out: &mut String) {
        header(
            out,
            "navigator_http_requests_total",
            "counter",
            "HTTP requests served, by route template, method and status code.",
        );
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let status = match status {
                0 => OTHER.to_owned(),
                code => code.to_string(),
            };
            sample(
                out,
                "navigator_http_requests_total",
                &[("route", route), ("method", method), ("status", &status)],
                *n as f64,
            );
        }
        header(
            out,
            "navigator_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to having its response, by route template and method.",
        );
        for ((route, method), histogram) in lock(&self.latency).iter() {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += histogram.buckets[i];
                let le = bound.to_string();
                sample(
                    out,
                    "navigator_http_request_duration_seconds_bucket",
                    &[("route", route), ("method", method), ("le", &le)],
                    cumulative as f64,
                );
            }
            let labels = [("route", route.as_str()), ("method", *method)];
            sample(
                out,
                "navigator_http_request_duration_seconds_bucket",
                &[labels[0], labels[1], ("le", "+Inf")],
                histogram.count as f64,
            );
            sample(
                out,
                "navigator_http_request_duration_seconds_sum",
                &labels,
                histogram.sum,
            );
            sample(
                out,
                "navigator_http_request_duration_seconds_count",
                &labels,
                histogram.count as f64,
            );
        }
        let rpc = lock(&self.rpc);
        header(
            out,
            "navigator_agent_rpc_calls_total",
            "counter",
            "RPC calls from this server to proxy agents, by method.",
        );
        for (method, counts) in rpc.iter() {
            sample(
                out,
                "navigator_agent_rpc_calls_total",
                &[("method", method)],
                counts.calls as f64,
            );
        }
        header(
            out,
            "navigator_agent_rpc_failures_total",
            "counter",
            "RPC calls to proxy agents that failed (timeout, no listener, transport or remote error), by method.",
        );
        for (method, counts) in rpc.iter() {
            sample(
                out,
                "navigator_agent_rpc_failures_total",
                &[("method", method)],
                counts.failures as f64,
            );
        }
    }
}

/// Gauges read from the store when scraped; `None` when the store could not be
/// read (then `navigator_database_up` is 0 and the gauges are left out rather
/// than reported as zeros).
pub struct Snapshot {
    /// By (protocol, status).
    pub forwards: Option<HashMap<(Protocol, ForwardStatus), u64>>,
    /// (up, down).
    pub proxies: Option<(u64, u64)>,
}

impl Snapshot {
    /// Reads the store behind `state`.
    pub async fn take(state: &AppState) -> Snapshot {
        let store = state.control.store();
        let forwards = match store.forward_status_counts().await {
            Ok(rows) => Some(rows.into_iter().map(|(p, s, n)| ((p, s), n)).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot count forwards");
                None
            }
        };
        let proxies = match store.list_proxies().await {
            Ok(proxies) => {
                let up = proxies
                    .iter()
                    .filter(|p| is_up(p, state.config.agent_down_time))
                    .count() as u64;
                Some((up, proxies.len() as u64 - up))
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot list proxies");
                None
            }
        };
        Snapshot { forwards, proxies }
    }

    fn encode(&self, out: &mut String) {
        header(
            out,
            "navigator_database_up",
            "gauge",
            "1 when the last scrape could read the database, else 0.",
        );
        let up = self.forwards.is_some() && self.proxies.is_some();
        sample(
            out,
            "navigator_database_up",
            &[],
            if up { 1.0 } else { 0.0 },
        );
        if let Some(forwards) = &self.forwards {
            header(
                out,
                "navigator_forwards",
                "gauge",
                "Port forwards in the store, by protocol and status.",
            );
            // Every combination, zeros included, so that a series does not
            // vanish (and alerts on it go silent) when its count drops to 0.
            for protocol in Protocol::ALL {
                for status in ForwardStatus::ALL {
                    let n = forwards.get(&(protocol, status)).copied().unwrap_or(0);
                    sample(
                        out,
                        "navigator_forwards",
                        &[("protocol", protocol.as_str()), ("status", status.as_str())],
                        n as f64,
                    );
                }
            }
        }
        if let Some((up, down)) = self.proxies {
            header(
                out,
                "navigator_proxies",
                "gauge",
                "Registered proxy agents, by whether their last heartbeat is within [agent] agent_down_time.",
            );
            sample(out, "navigator_proxies", &[("state", "up")], up as f64);
            sample(out, "navigator_proxies", &[("state", "down")], down as f64);
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help texts escape backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Middleware that counts every request by its route template (`/v1/forwards/{id}`,
/// never the concrete path, which would make one series per forward id).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    state.control.metrics().record_request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_histogram_and_gauges() {
        let metrics = Metrics::default();
        metrics.record_request("/v1/forwards", "GET", 200, Duration::from_millis(3));
        metrics.record_request("/v1/forwards", "GET", 200, Duration::from_secs(5));
        metrics.record_rpc("create_forward", true);
        metrics.record_rpc("create_forward", false);
        let snapshot = Snapshot {
            forwards: Some(HashMap::from([((Protocol::Tcp, ForwardStatus::Active), 2)])),
            proxies: Some((1, 0)),
        };
        let text = metrics.encode(&snapshot);
        for line in [
            "# TYPE navigator_http_requests_total counter",
            "navigator_http_requests_total{route=\"/v1/forwards\",method=\"GET\",status=\"200\"} 2",
            "navigator_http_request_duration_seconds_bucket{route=\"/v1/forwards\",method=\"GET\",le=\"0.0025\"} 0",
            "navigator_http_request_duration_seconds_bucket{route=\"/v1/forwards\",method=\"GET\",le=\"0.005\"} 1",
            "navigator_http_request_duration_seconds_bucket{route=\"/v1/forwards\",method=\"GET\",le=\"2.5\"} 1",
            "navigator_http_request_duration_seconds_bucket{route=\"/v1/forwards\",method=\"GET\",le=\"+Inf\"} 2",
            "navigator_http_request_duration_seconds_count{route=\"/v1/forwards\",method=\"GET\"} 2",
            "navigator_agent_rpc_calls_total{method=\"create_forward\"} 2",
            "navigator_agent_rpc_failures_total{method=\"create_forward\"} 1",
            "navigator_database_up 1",
            "navigator_forwards{protocol=\"tcp\",status=\"ACTIVE\"} 2",
            "navigator_forwards{protocol=\"udp\",status=\"ERROR\"} 0",
            "navigator_proxies{state=\"up\"} 1",
            "navigator_proxies{state=\"down\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn a_store_outage_drops_the_gauges_and_says_so() {
        let text = Metrics::default().encode(&Snapshot {
            forwards: None,
            proxies: None,
        });
        assert!(text.contains("navigator_database_up 0\n"));
        assert!(!text.contains("navigator_forwards{"));
    }

    #[test]
    fn methods_and_statuses_are_bounded() {
        let metrics = Metrics::default();
        for (method, status) in [("GET", 200), ("BREW", 200), ("PROPFIND", 999), ("get", 50)] {
            let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
            metrics.record_request("unmatched", method_label(&method), status, Duration::ZERO);
        }
        let text = metrics.encode(&Snapshot {
            forwards: None,
            proxies: None,
        });
        for line in [
            "navigator_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"200\"} 1",
            "navigator_http_requests_total{route=\"unmatched\",method=\"other\",status=\"200\"} 1",
            "navigator_http_requests_total{route=\"unmatched\",method=\"other\",status=\"other\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("BREW") && !text.contains("PROPFIND"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
