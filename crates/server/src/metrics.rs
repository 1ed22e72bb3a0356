//! `GET /metrics`: the server's counters in the OpenMetrics text format
//! (which Prometheus asks for first), encoded by `prometheus-client`.
//!
//! Counters live in memory, per server process (Prometheus sums them across
//! servers). Everything else is read when scraped: the forward and proxy
//! gauges from the store (so every server reports the same cluster-wide
//! values), the process metrics from `/proc`, and, with `[metrics]
//! per_forward`, each forward's usage from its agent.
//!
//! **Every label is bounded**, so no request can add a series: routes are
//! templates or `unmatched`, methods one of ten, statuses 100-599 or `other`,
//! RPC methods the constants of `navigator_rpc::methods`. Only the
//! per-forward series grow with the data, one per forward, and only when an
//! operator turns them on.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use navigator_core::{ForwardId, ForwardStatus, ForwardUsage, Protocol};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::app::AppState;
use crate::control::is_up;

/// `Content-Type` of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
/// (100-599), else [`OTHER`] (`StatusCode` admits up to 999).
fn status_label(status: u16) -> String {
    if (100..=599).contains(&status) {
        status.to_string()
    } else {
        OTHER.to_owned()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    protocol: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardIdLabels {
    forward_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardBytesLabels {
    forward_id: String,
    direction: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// The server's in-process counters. Each metric is an `Arc` inside, so a
/// scrape registers clones of them in its own registry with the gauges it
/// read.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    rpc_calls: Family<RpcLabels, Counter>,
    rpc_failures: Family<RpcLabels, Counter>,
    /// Proxies whose usage a per-forward scrape could not read.
    usage_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rpc_calls: Family::default(),
            rpc_failures: Family::default(),
            usage_errors: Counter::default(),
        }
    }
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
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method,
                status: status_label(status),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one RPC call to an agent (`method` as in `navigator_rpc::methods`).
    pub fn record_rpc(&self, method: &'static str, ok: bool) {
        let labels = RpcLabels { method };
        self.rpc_calls.get_or_create(&labels).inc();
        // Created on the first call, so that a rate of failures is 0 rather
        // than absent while there are none.
        let failures = self.rpc_failures.get_or_create(&labels);
        if !ok {
            failures.inc();
        }
    }

    /// Counts one proxy whose usage a scrape could not read.
    pub fn record_usage_error(&self) {
        self.usage_errors.inc();
    }

    /// Encodes the counters, then what `snapshot` read. (Help texts end
    /// without a full stop: the encoder adds one.)
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::default();
        registry.register(
            "navigator_http_requests",
            "HTTP requests served, by route template, method and status code",
            self.requests.clone(),
        );
        registry.register(
            "navigator_http_request_duration_seconds",
            "Time from receiving a request to having its response, by route template and method",
            self.latency.clone(),
        );
        registry.register(
            "navigator_agent_rpc_calls",
            "RPC calls from this server to proxy agents, by method",
            self.rpc_calls.clone(),
        );
        registry.register(
            "navigator_agent_rpc_failures",
            "RPC calls to proxy agents that failed (timeout, no listener, transport or remote error), by method",
            self.rpc_failures.clone(),
        );
        snapshot.register(&mut registry);
        if snapshot.per_forward.is_some() {
            registry.register(
                "navigator_forward_usage_errors",
                "Proxies whose agent did not give its forwards' usage to a scrape (down, slow, too old, or its backend counts nothing); their forwards' series are left out of that scrape",
                self.usage_errors.clone(),
            );
        }
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder's Result is for
        // other writers.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// What a scrape reads besides the counters. `None` for what could not be
/// read: the store's gauges are then left out rather than reported as
/// zeros (and `navigator_database_up` is 0).
#[derive(Default)]
pub struct Snapshot {
    /// By (protocol, status).
    pub forwards: Option<std::collections::HashMap<(Protocol, ForwardStatus), u64>>,
    /// (up, down).
    pub proxies: Option<(u64, u64)>,
    /// This process, from `/proc` (Linux only).
    pub process: Option<ProcessStats>,
    /// With `[metrics] per_forward`: the usage of every ACTIVE forward whose
    /// agent answered in time. `None` when the option is off.
    pub per_forward: Option<Vec<(ForwardId, ForwardUsage)>>,
}

impl Snapshot {
    /// Reads the store behind `state`, this process, and, with `[metrics]
    /// per_forward`, the agents.
    pub async fn take(state: &AppState) -> Snapshot {
        let control = &state.control;
        let store = control.store();
        let forwards = match store.forward_status_counts().await {
            Ok(rows) => Some(rows.into_iter().map(|(p, s, n)| ((p, s), n)).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot count forwards");
                None
            }
        };
        let listed = match store.list_proxies().await {
            Ok(proxies) => Some(proxies),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot list proxies");
                None
            }
        };
        let proxies = listed.as_ref().map(|proxies| {
            let up = proxies
                .iter()
                .filter(|p| is_up(p, state.config.agent_down_time))
                .count() as u64;
            (up, proxies.len() as u64 - up)
        });
        let per_forward = match (&listed, state.config.metrics_per_forward) {
            (Some(proxies), true) => {
                let hosts: Vec<String> = proxies.iter().map(|p| p.host.clone()).collect();
                Some(per_forward_usage(state, &hosts).await)
            }
            (None, true) => Some(Vec::new()),
            (_, false) => None,
        };
        Snapshot {
            forwards,
            proxies,
            process: ProcessStats::read(),
            per_forward,
        }
    }

    fn register(&self, registry: &mut Registry) {
        let up = self.forwards.is_some() && self.proxies.is_some();
        registry.register(
            "navigator_database_up",
            "1 when the last scrape could read the database, else 0",
            constant_gauge(i64::from(up)),
        );
        if let Some(forwards) = &self.forwards {
            let family = Family::<ForwardLabels, Gauge>::default();
            // Every combination, zeros included, so that a series does not
            // vanish (and alerts on it go silent) when its count drops to 0.
            for protocol in Protocol::ALL {
                for status in ForwardStatus::ALL {
                    let n = forwards.get(&(protocol, status)).copied().unwrap_or(0);
                    family
                        .get_or_create(&ForwardLabels {
                            protocol: protocol.as_str(),
                            status: status.as_str(),
                        })
                        .set(saturating_i64(n));
                }
            }
            registry.register(
                "navigator_forwards",
                "Port forwards in the store, by protocol and status",
                family,
            );
        }
        if let Some((up, down)) = self.proxies {
            let family = Family::<ProxyLabels, Gauge>::default();
            family
                .get_or_create(&ProxyLabels { state: "up" })
                .set(saturating_i64(up));
            family
                .get_or_create(&ProxyLabels { state: "down" })
                .set(saturating_i64(down));
            registry.register(
                "navigator_proxies",
                "Registered proxy agents, by whether their last heartbeat is within [agent] agent_down_time",
                family,
            );
        }
        if let Some(process) = &self.process {
            process.register(registry);
        }
        if let Some(forwards) = &self.per_forward {
            let bytes = Family::<ForwardBytesLabels, Counter>::default();
            let total = Family::<ForwardIdLabels, Counter>::default();
            let active = Family::<ForwardIdLabels, Gauge>::default();
            for (id, usage) in forwards {
                let forward_id = id.to_string();
                for (direction, n) in [("in", usage.bytes_in), ("out", usage.bytes_out)] {
                    bytes
                        .get_or_create(&ForwardBytesLabels {
                            forward_id: forward_id.clone(),
                            direction,
                        })
                        .inc_by(n);
                }
                let labels = ForwardIdLabels { forward_id };
                total.get_or_create(&labels).inc_by(usage.connections_total);
                active
                    .get_or_create(&labels)
                    .set(saturating_i64(usage.connections_active));
            }
            registry.register(
                "navigator_forward_bytes",
                "Bytes a forward carried since its proxy started carrying it: direction in is from clients to the instance, out back to clients ([metrics] per_forward)",
                bytes,
            );
            registry.register(
                "navigator_forward_connections",
                "TCP connections (UDP sessions) a forward opened since its proxy started carrying it ([metrics] per_forward)",
                total,
            );
            registry.register(
                "navigator_forward_connections_active",
                "TCP connections (UDP sessions) of a forward open now ([metrics] per_forward)",
                active,
            );
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn constant_gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

fn float_gauge(value: f64) -> FloatGauge {
    let gauge = FloatGauge::default();
    gauge.set(value);
    gauge
}

/// The usage of every ACTIVE forward on `hosts`, one agent call per proxy
/// (per 1,000 forwards) in parallel, each bounded; a proxy that fails is
/// left out, counted and logged.
async fn per_forward_usage(state: &AppState, hosts: &[String]) -> Vec<(ForwardId, ForwardUsage)> {
    let control = &state.control;
    let asks = hosts.iter().map(|host| async move {
        let forwards = match control.store().forwards_on_proxy(host).await {
            Ok(forwards) => forwards,
            Err(e) => {
                tracing::warn!(proxy = %host, error = %e, "metrics: cannot list the proxy's forwards");
                control.metrics().record_usage_error();
                return Vec::new();
            }
        };
        let ids: Vec<ForwardId> = forwards
            .iter()
            .filter(|f| f.status == ForwardStatus::Active)
            .map(|f| f.id)
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        // A group's counters are those of the member holding its addresses.
        let agent = match control.usage_host(host).await {
            Ok(agent) => agent,
            Err(reason) => {
                tracing::debug!(proxy = %host, %reason, "metrics: no per-forward usage from the group");
                return Vec::new();
            }
        };
        match crate::usage::proxy_usage(control, &agent, &ids, crate::usage::USAGE_TIMEOUT).await {
            Ok(usage) => usage.into_iter().collect(),
            Err(reason) => {
                tracing::warn!(proxy = %host, %reason, "metrics: no per-forward usage from the proxy");
                control.metrics().record_usage_error();
                Vec::new()
            }
        }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// This process's resources, as Prometheus' client libraries name them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

/// Linux reports CPU times and start times in USER_HZ ticks, which is 100
/// on every architecture Navigator is built for (the kernel's ABI fixes it
/// for /proc, whatever CONFIG_HZ is).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no `/proc` (or it is not
    /// Linux's), so that the series are left out rather than wrong.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        ProcessStats::parse(&stat, &status, &limits, &boot, open_fds)
    }

    fn parse(
        stat: &str,
        status: &str,
        limits: &str,
        boot: &str,
        open_fds: u64,
    ) -> Option<ProcessStats> {
        // The command name (field 2) is in parentheses and may hold spaces
        // or parentheses itself: split after the last ')'. Field 3 (state)
        // is then the first word.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // "Max open files            1024                 524288               files"
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))?
            .split_whitespace()
            .next()?;
        let max_fds = if max_fds == "unlimited" {
            u64::MAX
        } else {
            max_fds.parse().ok()?
        };
        let boot_time: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(ProcessStats {
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            resident_memory_bytes: rss_kib * 1024,
            open_fds,
            max_fds,
            start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
        })
    }

    fn register(&self, registry: &mut Registry) {
        let cpu = FloatCounter::default();
        cpu.inc_by(self.cpu_seconds);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            cpu,
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            constant_gauge(saturating_i64(self.resident_memory_bytes)),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            constant_gauge(saturating_i64(self.open_fds)),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft RLIMIT_NOFILE)",
            constant_gauge(saturating_i64(self.max_fds)),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            float_gauge(self.start_time_seconds),
        );
    }
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
    use std::collections::HashMap;

    use super::*;

    fn has_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }

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
            ..Snapshot::default()
        };
        let text = metrics.encode(&snapshot);
        for line in [
            "# TYPE navigator_http_requests counter",
            "navigator_http_requests_total{route=\"/v1/forwards\",method=\"GET\",status=\"200\"} 2",
            "# TYPE navigator_http_request_duration_seconds histogram",
            "navigator_http_request_duration_seconds_bucket{le=\"0.0025\",route=\"/v1/forwards\",method=\"GET\"} 0",
            "navigator_http_request_duration_seconds_bucket{le=\"0.005\",route=\"/v1/forwards\",method=\"GET\"} 1",
            "navigator_http_request_duration_seconds_bucket{le=\"2.5\",route=\"/v1/forwards\",method=\"GET\"} 1",
            "navigator_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/forwards\",method=\"GET\"} 2",
            "navigator_http_request_duration_seconds_count{route=\"/v1/forwards\",method=\"GET\"} 2",
            "navigator_agent_rpc_calls_total{method=\"create_forward\"} 2",
            "navigator_agent_rpc_failures_total{method=\"create_forward\"} 1",
            "navigator_database_up 1",
            "navigator_forwards{protocol=\"tcp\",status=\"ACTIVE\"} 2",
            "navigator_forwards{protocol=\"udp\",status=\"ERROR\"} 0",
            "navigator_proxies{state=\"up\"} 1",
            "navigator_proxies{state=\"down\"} 0",
            "# EOF",
        ] {
            has_line(&text, line);
        }
        assert!(!text.contains("navigator_forward_bytes"), "{text}");
    }

    #[test]
    fn a_store_outage_drops_the_gauges_and_says_so() {
        let text = Metrics::default().encode(&Snapshot::default());
        has_line(&text, "navigator_database_up 0");
        assert!(!text.contains("navigator_forwards{"));
    }

    /// 1,000 requests with random methods, statuses and unmatched paths
    /// leave a handful of series, whatever the randomness.
    #[test]
    fn methods_statuses_and_paths_are_bounded() {
        let metrics = Metrics::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            // xorshift: reproducible noise without a dependency.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..1000 {
            let n = next();
            let method = format!("M{:X}", n % 1_000_000);
            let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
            let status = (next() % 1000) as u16;
            // The middleware labels any path no route matched `unmatched`.
            metrics.record_request(
                UNMATCHED_ROUTE,
                method_label(&method),
                status,
                Duration::ZERO,
            );
        }
        for (method, status) in [("GET", 200), ("get", 50)] {
            let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
            metrics.record_request(
                UNMATCHED_ROUTE,
                method_label(&method),
                status,
                Duration::ZERO,
            );
        }
        let text = metrics.encode(&Snapshot::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("navigator_http_requests_total{"))
            .count();
        // One method label (`other`) for the invented ones, at most 500
        // statuses plus `other`, and GET 200.
        assert!(series <= 502, "{series} series:\n{text}");
        has_line(
            &text,
            "navigator_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"200\"} 1",
        );
        assert!(text.contains("status=\"other\""), "{text}");
        assert!(!text.contains("method=\"M"), "{text}");
        let histograms = text
            .lines()
            .filter(|l| l.starts_with("navigator_http_request_duration_seconds_count{"))
            .count();
        assert_eq!(histograms, 2, "route × method only:\n{text}");
    }

    #[test]
    fn process_metrics_come_from_proc() {
        let stats = ProcessStats::read().expect("this is Linux");
        assert!(
            stats.open_fds > 0 && stats.max_fds >= stats.open_fds,
            "{stats:?}"
        );
        assert!(stats.resident_memory_bytes > 0, "{stats:?}");
        assert!(stats.start_time_seconds > 1_600_000_000.0, "{stats:?}");
        let text = Metrics::default().encode(&Snapshot {
            process: Some(stats),
            ..Snapshot::default()
        });
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} in:\n{text}"
            );
        }
    }

    #[test]
    fn proc_parsing_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 250 150 0 0 20 0 1 0 1000 1 1";
        let stats = ProcessStats::parse(
            stat,
            "Name:\tx\nVmRSS:\t  2048 kB\n",
            "Limit Soft Limit Hard Limit Units\nMax open files            1024                 524288               files\n",
            "cpu 1 2 3\nbtime 1700000000\n",
            7,
        )
        .unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 4.0,
                resident_memory_bytes: 2048 * 1024,
                open_fds: 7,
                max_fds: 1024,
                start_time_seconds: 1_700_000_010.0,
            }
        );
    }

    #[test]
    fn per_forward_series_only_when_asked() {
        let id = ForwardId::new_random();
        let usage = ForwardUsage {
            bytes_in: 100,
            bytes_out: 2000,
            connections_total: 3,
            connections_active: 1,
            last_connection_at: Some(1_700_000_000),
        };
        let metrics = Metrics::default();
        metrics.record_usage_error();
        let text = metrics.encode(&Snapshot {
            per_forward: Some(vec![(id, usage)]),
            ..Snapshot::default()
        });
        for line in [
            format!("navigator_forward_bytes_total{{forward_id=\"{id}\",direction=\"in\"}} 100"),
            format!("navigator_forward_bytes_total{{forward_id=\"{id}\",direction=\"out\"}} 2000"),
            format!("navigator_forward_connections_total{{forward_id=\"{id}\"}} 3"),
            format!("navigator_forward_connections_active{{forward_id=\"{id}\"}} 1"),
            "navigator_forward_usage_errors_total 1".to_owned(),
        ] {
            has_line(&text, &line);
        }
        let off = metrics.encode(&Snapshot::default());
        assert!(!off.contains("forward_id"), "{off}");
        assert!(!off.contains("navigator_forward_usage_errors"), "{off}");
    }
}
