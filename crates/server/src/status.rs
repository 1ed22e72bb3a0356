//! `navigator-status upgrade check`, after `nova-status upgrade check`: is
//! this node ready to run this release? Each check says Success, Warning or
//! Failure with details; the command prints them as a table and exits 0
//! (all Success), 1 (a Warning), 2 (a Failure) or 255 (the checks could not
//! run at all).
//!
//! The checks read what the server would read at start-up (the same
//! `--config-file`) and change nothing: no migration, no queue, no sysctl.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use navigator_core::PortRange;
use navigator_store::{ProxyRecord, SchemaStatus, Store, redact};

use crate::config::Config;

/// How long the database or broker may take to answer one check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate expiring within this is a Warning.
pub const CERTIFICATE_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The outcome of one check, in nova-status's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Success,
    Warning,
    Failure,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Success => "Success",
            Outcome::Warning => "Warning",
            Outcome::Failure => "Failure",
        })
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub details: String,
}

impl Check {
    fn new(name: &'static str, outcome: Outcome, details: impl Into<String>) -> Check {
        Check {
            name,
            outcome,
            details: details.into(),
        }
    }
}

/// nova-status's exit code for `checks`: 0, 1 or 2 by the worst outcome.
pub fn exit_code(checks: &[Check]) -> u8 {
    match checks.iter().map(|c| c.outcome).max() {
        None | Some(Outcome::Success) => 0,
        Some(Outcome::Warning) => 1,
        Some(Outcome::Failure) => 2,
    }
}

/// The widest the table's text gets; longer details wrap.
const WIDTH: usize = 76;

/// `text` in lines of at most `width` characters, broken at spaces (a word
/// longer than a line is cut).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word = word.to_owned();
        loop {
            let used = line.chars().count();
            let needed = word.chars().count() + usize::from(used > 0);
            if used + needed <= width {
                if used > 0 {
                    line.push(' ');
                }
                line.push_str(&word);
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            // A word longer than a whole line.
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The table nova-status prints.
pub fn render(checks: &[Check]) -> String {
    let mut lines = vec![String::from("Upgrade Check Results")];
    let mut blocks = Vec::new();
    for check in checks {
        blocks.push(vec![
            format!("Check: {}", check.name),
            format!("Result: {}", check.outcome),
            format!(
                "Details: {}",
                if check.details.is_empty() {
                    "None"
                } else {
                    &check.details
                }
            ),
        ]);
    }
    let width = blocks
        .iter()
        .flatten()
        .chain(lines.iter())
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(WIDTH);
    let rule = format!("+{}+\n", "-".repeat(width + 2));
    let row = |text: &str| {
        wrap(text, width)
            .iter()
            .map(|line| format!("| {line:<width$} |\n"))
            .collect::<String>()
    };
    let mut out = rule.clone();
    for line in lines.drain(..) {
        out.push_str(&row(&line));
    }
    out.push_str(&rule);
    for block in blocks {
        for line in block {
            out.push_str(&row(&line));
        }
        out.push_str(&rule);
    }
    out
}

/// The configuration file: it loads (else nothing else can be checked, and
/// the caller stops), and names no option Navigator does not know.
pub fn check_config(path: Option<&Path>) -> (Check, Option<Config>) {
    const NAME: &str = "Configuration file";
    let shown = path.map_or("(defaults)".to_owned(), |p| p.display().to_string());
    match Config::load(path) {
        Err(e) => (Check::new(NAME, Outcome::Failure, e.to_string()), None),
        Ok(config) if !config.unknown_options.is_empty() => (
            Check::new(
                NAME,
                Outcome::Warning,
                format!(
                    "{shown}: unknown options (typos, or removed in this release; they are ignored): {}",
                    config.unknown_options.join(", ")
                ),
            ),
            Some(config),
        ),
        Ok(config) => (
            Check::new(NAME, Outcome::Success, format!("{shown} is valid")),
            Some(config),
        ),
    }
}

/// `[oslo_policy] policy_file`: it parses, and overrides only rules this
/// release has (others are left over from an earlier release, or typos).
pub fn check_policy(config: &Config) -> Check {
    const NAME: &str = "Policy file";
    let Some(path) = config.policy_file.as_deref() else {
        return Check::new(NAME, Outcome::Success, "not set: the default rules apply");
    };
    if let Err(e) = crate::policy::Policy::load(Some(path)) {
        return Check::new(NAME, Outcome::Failure, e.to_string());
    }
    let unknown = std::fs::read_to_string(path)
        .map(|text| unknown_policy_rules(&text))
        .unwrap_or_default();
    if unknown.is_empty() {
        Check::new(
            NAME,
            Outcome::Success,
            format!("{} is valid", path.display()),
        )
    } else {
        Check::new(
            NAME,
            Outcome::Warning,
            format!(
                "{} sets rules this release does not have (removed or misspelt; they have no effect): {}",
                path.display(),
                unknown.join(", ")
            ),
        )
    }
}

/// The rules of a policy file's text that are not among the defaults.
pub fn unknown_policy_rules(text: &str) -> Vec<String> {
    let Ok(rules) =
        yaml_serde::from_str::<std::collections::BTreeMap<String, yaml_serde::Value>>(text)
    else {
        return Vec::new();
    };
    rules
        .into_keys()
        .filter(|rule| !crate::policy::DEFAULTS.iter().any(|d| d.name == rule))
        .collect()
}

/// The schema against this release's migrations.
pub fn check_schema(status: &SchemaStatus) -> Check {
    const NAME: &str = "Database schema";
    if !status.unknown.is_empty() {
        return Check::new(
            NAME,
            Outcome::Failure,
            format!(
                "the database has migrations {:?} that this release (schema version {}) does not know: it was upgraded by a newer release; run that release",
                status.unknown, status.latest
            ),
        );
    }
    if !status.pending.is_empty() {
        return Check::new(
            NAME,
            Outcome::Failure,
            format!(
                "schema version {} of {}: run `navigator-server db sync` to apply migrations {:?} before starting servers of this release",
                status.current.unwrap_or(0),
                status.latest,
                status.pending
            ),
        );
    }
    Check::new(
        NAME,
        Outcome::Success,
        format!("schema version {} (current)", status.latest),
    )
}

/// Registered proxies and whether they report within `down_after`.
pub fn check_proxies(
    proxies: &[ProxyRecord],
    now: DateTime<Utc>,
    down_after: Duration,
    cluster: bool,
) -> Check {
    const NAME: &str = "Proxies";
    if proxies.is_empty() {
        return if cluster {
            Check::new(
                NAME,
                Outcome::Warning,
                "no proxy has registered: start navigator-agent on the proxy nodes (with the same transport_url)",
            )
        } else {
            Check::new(
                NAME,
                Outcome::Success,
                "none registered yet (all-in-one registers its own at start)",
            )
        };
    }
    // A heartbeat from the future (clock skew) counts as recent.
    let is_down = |p: &ProxyRecord| match DateTime::parse_from_rfc3339(&p.last_heartbeat) {
        Err(_) => true,
        Ok(last) => now
            .signed_duration_since(last)
            .to_std()
            .is_ok_and(|age| age > down_after),
    };
    let down: Vec<String> = proxies
        .iter()
        .filter(|p| is_down(p))
        .map(|p| format!("{} (last report {})", p.host, p.last_heartbeat))
        .collect();
    if down.is_empty() {
        Check::new(
            NAME,
            Outcome::Success,
            format!("{} registered, all reporting", proxies.len()),
        )
    } else {
        Check::new(
            NAME,
            Outcome::Warning,
            format!(
                "{} of {} not reporting within agent_down_time ({}s): {}",
                down.len(),
                proxies.len(),
                down_after.as_secs(),
                down.join(", ")
            ),
        )
    }
}

/// `[ssl] cert_file`'s end of validity (`not_after`), from `now`.
pub fn check_certificate_expiry(
    path: &Path,
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Check {
    const NAME: &str = "API TLS certificate";
    let when = not_after.format("%Y-%m-%dT%H:%M:%SZ");
    let left = not_after.signed_duration_since(now);
    if left <= chrono::TimeDelta::zero() {
        return Check::new(
            NAME,
            Outcome::Failure,
            format!(
                "{} expired at {when}: the server will not start",
                path.display()
            ),
        );
    }
    let days = left.num_days();
    if left.to_std().is_ok_and(|left| left < CERTIFICATE_WARNING) {
        Check::new(
            NAME,
            Outcome::Warning,
            format!(
                "{} expires at {when}, in {days} days: renew it (the server re-reads it without a restart)",
                path.display()
            ),
        )
    } else {
        Check::new(
            NAME,
            Outcome::Success,
            format!("{} valid until {when} ({days} days)", path.display()),
        )
    }
}

/// Reads the end of validity of the first certificate in `path`.
pub fn certificate_not_after(path: &Path) -> Result<DateTime<Utc>, String> {
    let chain = navigator_rpc::broker::read_certificates(path)?;
    let first = chain.first().ok_or("no certificate in the file")?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or_else(|| "notAfter is out of range".to_owned())
}

/// `[ssl]`: files load, and the certificate is not about to expire.
pub fn check_tls(config: &Config, now: DateTime<Utc>) -> Check {
    const NAME: &str = "API TLS certificate";
    let Some(cert) = config.ssl.cert_file.as_deref() else {
        return Check::new(NAME, Outcome::Success, "[ssl] not configured (plain HTTP)");
    };
    match certificate_not_after(cert) {
        Ok(not_after) => check_certificate_expiry(cert, not_after, now),
        Err(e) => Check::new(NAME, Outcome::Failure, format!("{}: {e}", cert.display())),
    }
}

/// The port pool against this host's ephemeral ports (the preflight's
/// warning); `ephemeral` and `reserved` are the two sysctls' text.
pub fn check_port_pool(pool: PortRange, ephemeral: Option<&str>, reserved: Option<&str>) -> Check {
    const NAME: &str = "Port pool";
    let findings = navigator_dataplane::preflight::port_pool_findings(pool, ephemeral, reserved);
    match findings.first() {
        None => Check::new(
            NAME,
            Outcome::Success,
            format!("[agent] port_range {pool} is clear of this host's ephemeral ports"),
        ),
        Some(finding) => Check::new(NAME, Outcome::Warning, finding.to_string()),
    }
}

/// The database: reachable, and its schema current; the proxies from it.
async fn check_database(config: &Config, database_url: &str, cluster: bool) -> Vec<Check> {
    if let Some(path) = navigator_store::sqlite_path(database_url)
        && !path.exists()
    {
        // Connecting would create an empty file; say what is missing instead.
        return vec![Check::new(
            "Database",
            Outcome::Failure,
            format!(
                "no database file at {}: run `navigator-server db sync` (with the same configuration file)",
                path.display()
            ),
        )];
    }
    let reach = async {
        let store = Store::connect(database_url)
            .await
            .map_err(|e| e.to_string())?;
        let schema = store.schema_status().await.map_err(|e| e.to_string());
        let proxies = match &schema {
            Ok(status) if status.pending.is_empty() && status.unknown.is_empty() => {
                Some(store.list_proxies().await.map_err(|e| e.to_string()))
            }
            _ => None,
        };
        store.close().await;
        Ok::<_, String>((schema?, proxies))
    };
    let shown = redact(database_url);
    let (schema, proxies) = match tokio::time::timeout(CHECK_TIMEOUT, reach).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            return vec![Check::new(
                "Database",
                Outcome::Failure,
                format!("cannot reach {shown}: {e}"),
            )];
        }
        Err(_) => {
            return vec![Check::new(
                "Database",
                Outcome::Failure,
                format!("{shown} did not answer within {CHECK_TIMEOUT:?}"),
            )];
        }
    };
    let mut checks = vec![
        Check::new("Database", Outcome::Success, format!("{shown} answers")),
        check_schema(&schema),
    ];
    match proxies {
        Some(Ok(proxies)) => checks.push(check_proxies(
            &proxies,
            Utc::now(),
            config.agent_down_time,
            cluster,
        )),
        Some(Err(e)) => checks.push(Check::new("Proxies", Outcome::Failure, e)),
        None => {}
    }
    checks
}

/// RabbitMQ in cluster mode: a connection can be made (and is closed).
async fn check_rabbitmq(config: &Config) -> Check {
    const NAME: &str = "RabbitMQ";
    if !config.transport_url.starts_with("rabbit://") {
        return Check::new(NAME, Outcome::Success, "not used (all-in-one, inproc://)");
    }
    let shown = navigator_rpc::broker::mask_url(&config.transport_url);
    let broker = match navigator_rpc::Broker::new(&config.transport_url, &config.rabbit) {
        Ok(broker) => broker,
        Err(e) => return Check::new(NAME, Outcome::Failure, format!("{shown}: {e}")),
    };
    let connect =
        navigator_rpc::AmqpTransport::connect_to(broker, navigator_rpc::amqp::DEFAULT_EXCHANGE);
    match tokio::time::timeout(CHECK_TIMEOUT, connect).await {
        Ok(Ok(transport)) => {
            transport.close().await;
            Check::new(
                NAME,
                Outcome::Success,
                format!("{shown} accepts connections"),
            )
        }
        Ok(Err(e)) => Check::new(
            NAME,
            Outcome::Failure,
            format!("cannot connect to {shown}: {e}"),
        ),
        Err(_) => Check::new(
            NAME,
            Outcome::Failure,
            format!("{shown} did not answer within {CHECK_TIMEOUT:?}"),
        ),
    }
}

/// Every check, in table order, for the configuration at `path` and the
/// database at `database_url` (the server's default when unset).
pub async fn upgrade_check(
    path: Option<&Path>,
    database_url: impl FnOnce(&Config) -> Result<String, String>,
) -> Vec<Check> {
    let (config_check, config) = check_config(path);
    let mut checks = vec![config_check];
    let Some(config) = config else {
        return checks;
    };
    checks.push(check_policy(&config));
    let cluster = config.transport_url.starts_with("rabbit://");
    match database_url(&config) {
        Ok(url) => checks.extend(check_database(&config, &url, cluster).await),
        Err(e) => checks.push(Check::new("Database", Outcome::Failure, e)),
    }
    checks.push(check_rabbitmq(&config).await);
    checks.push(check_tls(&config, Utc::now()));
    let host = navigator_dataplane::Host::local();
    let ephemeral = host.sysctl("net.ipv4.ip_local_port_range").await;
    let reserved = host.sysctl("net.ipv4.ip_local_reserved_ports").await;
    checks.push(check_port_pool(
        config.port_range,
        ephemeral.as_deref(),
        reserved.as_deref(),
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(outcome: Outcome) -> Check {
        Check::new("x", outcome, "")
    }

    #[test]
    fn exit_codes_follow_the_worst_outcome() {
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(&[check(Outcome::Success)]), 0);
        assert_eq!(
            exit_code(&[check(Outcome::Success), check(Outcome::Warning)]),
            1
        );
        assert_eq!(
            exit_code(&[
                check(Outcome::Failure),
                check(Outcome::Warning),
                check(Outcome::Success)
            ]),
            2
        );
    }

    #[test]
    fn the_table_wraps_long_details_at_spaces() {
        let long = "word ".repeat(40);
        let table = render(&[Check::new("Long", Outcome::Warning, long.trim())]);
        assert!(table.starts_with("+---"), "{table}");
        assert!(table.contains("| Check: Long"), "{table}");
        assert!(table.contains("| Result: Warning"), "{table}");
        let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{table}");
        assert!(table.lines().all(|l| !l.contains("wor |")), "{table}");
        assert_eq!(
            wrap("a-very-long-word", 5),
            ["a-ver", "y-lon", "g-wor", "d"]
        );
        assert_eq!(wrap("", 5), [""]);
    }

    fn schema(current: Option<i64>, pending: Vec<i64>, unknown: Vec<i64>) -> SchemaStatus {
        SchemaStatus {
            current,
            latest: 3,
            pending,
            unknown,
        }
    }

    #[test]
    fn schema_must_be_exactly_this_releases() {
        let ok = check_schema(&schema(Some(3), vec![], vec![]));
        assert_eq!(ok.outcome, Outcome::Success, "{ok:?}");
        let behind = check_schema(&schema(Some(2), vec![3], vec![]));
        assert_eq!(behind.outcome, Outcome::Failure);
        assert!(behind.details.contains("db sync"), "{behind:?}");
        let never = check_schema(&schema(None, vec![1, 2, 3], vec![]));
        assert!(never.details.contains("schema version 0 of 3"), "{never:?}");
        let ahead = check_schema(&schema(Some(4), vec![], vec![4]));
        assert_eq!(ahead.outcome, Outcome::Failure);
        assert!(ahead.details.contains("newer release"), "{ahead:?}");
    }

    fn proxy(host: &str, last: &str) -> ProxyRecord {
        ProxyRecord {
            host: host.into(),
            backend: "nft".into(),
            external_addresses: vec![],
            port_range: "20000-20099".parse().unwrap(),
            last_heartbeat: last.into(),
            features: vec![],
        }
    }

    #[test]
    fn proxies_must_report() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let down = Duration::from_secs(75);
        let run = |proxies: &[ProxyRecord], cluster| check_proxies(proxies, now, down, cluster);
        assert_eq!(run(&[], true).outcome, Outcome::Warning);
        assert_eq!(run(&[], false).outcome, Outcome::Success);
        let fresh = proxy("p1", "2026-12-07T11:59:30.000000Z");
        let ok = run(std::slice::from_ref(&fresh), true);
        assert_eq!(ok.outcome, Outcome::Success, "{ok:?}");
        // Clock skew: a report from the near future is recent.
        let future = proxy("p3", "2026-12-07T12:00:05.000000Z");
        assert_eq!(
            run(&[fresh.clone(), future], true).outcome,
            Outcome::Success
        );
        let stale = proxy("p2", "2026-12-07T11:50:00.000000Z");
        let warned = run(&[fresh.clone(), stale], true);
        assert_eq!(warned.outcome, Outcome::Warning);
        assert!(
            warned.details.contains("1 of 2") && warned.details.contains("p2"),
            "{warned:?}"
        );
        let garbled = run(&[proxy("p4", "yesterday")], true);
        assert_eq!(garbled.outcome, Outcome::Warning);
    }

    #[test]
    fn certificates_warn_within_30_days_and_fail_once_expired() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let path = Path::new("/etc/navigator/api.pem");
        let at = |days: i64| now + chrono::TimeDelta::days(days);
        assert_eq!(
            check_certificate_expiry(path, at(90), now).outcome,
            Outcome::Success
        );
        let soon = check_certificate_expiry(path, at(10), now);
        assert_eq!(soon.outcome, Outcome::Warning);
        assert!(soon.details.contains("in 10 days"), "{soon:?}");
        assert_eq!(
            check_certificate_expiry(path, at(-1), now).outcome,
            Outcome::Failure
        );
    }

    #[test]
    fn a_pool_in_the_ephemeral_range_is_a_warning() {
        let pool: PortRange = "30000-39999".parse().unwrap();
        let warned = check_port_pool(pool, Some("32768\t60999"), None);
        assert_eq!(warned.outcome, Outcome::Warning);
        assert!(warned.details.contains("ephemeral"), "{warned:?}");
        let clear: PortRange = "20000-29999".parse().unwrap();
        assert_eq!(
            check_port_pool(clear, Some("32768\t60999"), None).outcome,
            Outcome::Success
        );
        // Reserved: the kernel never lends these out.
        assert_eq!(
            check_port_pool(pool, Some("32768\t60999"), Some("30000-39999")).outcome,
            Outcome::Success
        );
    }

    #[test]
    fn configuration_and_policy_files() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("navigator.conf");
        std::fs::write(&conf, "[DEFAULT]\nbind_port = 9797\n").unwrap();
        assert_eq!(check_config(Some(&conf)).0.outcome, Outcome::Success);
        std::fs::write(&conf, "[DEFAULT]\nbind_prot = 9797\n").unwrap();
        let (typo, config) = check_config(Some(&conf));
        assert_eq!(typo.outcome, Outcome::Warning);
        assert!(typo.details.contains("[DEFAULT] bind_prot"), "{typo:?}");
        assert!(config.is_some());
        std::fs::write(&conf, "[DEFAULT]\nbind_port = many\n").unwrap();
        let (bad, config) = check_config(Some(&conf));
        assert_eq!(bad.outcome, Outcome::Failure);
        assert!(bad.details.contains("bind_port"), "{bad:?}");
        assert!(config.is_none());

        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &conf,
            format!("[oslo_policy]\npolicy_file = {}\n", policy.display()),
        )
        .unwrap();
        let config = Config::load(Some(&conf)).unwrap();
        std::fs::write(&policy, "\"create_forward\": \"role:admin\"\n").unwrap();
        assert_eq!(check_policy(&config).outcome, Outcome::Success);
        std::fs::write(&policy, "\"frobnicate_forward\": \"role:admin\"\n").unwrap();
        let stale = check_policy(&config);
        assert_eq!(stale.outcome, Outcome::Warning);
        assert!(stale.details.contains("frobnicate_forward"), "{stale:?}");
        std::fs::write(&policy, "\"create_forward\": \"role:admin and (\"\n").unwrap();
        assert_eq!(check_policy(&config).outcome, Outcome::Failure);
        let defaults = Config::parse("t.conf", "").unwrap();
        assert_eq!(check_policy(&defaults).outcome, Outcome::Success);
    }
}
