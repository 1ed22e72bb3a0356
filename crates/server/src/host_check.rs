//! The `Host` check against DNS rebinding.
//!
//! A web page from any site can make its visitor's browser send requests to
//! a host name the attacker controls, then point that name at 127.0.0.1
//! ("rebinding"): the browser treats the answers as same-origin, so the page
//! drives a noauth API (every caller an admin) and the dashboard. What gives
//! the attack away is the `Host` header, which browsers always send and
//! scripts cannot change: it carries the attacker's name.
//!
//! So when the check is in force, only these hosts are served:
//! - `localhost` (not `*.localhost`: not every resolver keeps those local);
//! - any IP address literal (`127.0.0.1`, `[::1]`, `10.0.0.5`): rebinding
//!   needs a name, and a page whose origin is an address was served by that
//!   address itself;
//! - the names in `[api] allowed_hosts`, and the host of
//!   `[DEFAULT] public_endpoint` (added by `app::router`).
//!
//! It is in force with `auth_strategy = noauth`, and with `keystone` as soon
//! as `allowed_hosts` is set (browsers send the dashboard's cookie to a
//! rebound name too). A request without `Host` (HTTP/1.0, the dashboard's
//! in-process calls) is not a browser's and passes. Refused requests get
//! 421 Misdirected Request: the request is fine, it is the server it was
//! aimed at that does not answer for that name.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, http::Uri};
use navigator_api::ErrorBody;

use crate::config::AuthStrategy;

/// Which `Host` values are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostCheck {
    /// Any host (keystone without `allowed_hosts`).
    Off,
    /// `localhost`, IP literals and these names (lower case).
    Only(Vec<String>),
}

impl HostCheck {
    /// The check `auth_strategy` and `[api] allowed_hosts` ask for.
    pub fn new(auth_strategy: AuthStrategy, allowed_hosts: &[String]) -> HostCheck {
        if auth_strategy == AuthStrategy::Keystone && allowed_hosts.is_empty() {
            HostCheck::Off
        } else {
            HostCheck::Only(allowed_hosts.to_vec())
        }
    }

    /// Whether a request whose `Host` (or URI authority) is `host` is served.
    pub fn allows(&self, host: &str) -> bool {
        let HostCheck::Only(names) = self else {
            return true;
        };
        let Some(name) = host_name(host) else {
            return false;
        };
        name == "localhost" || name.parse::<IpAddr>().is_ok() || names.contains(&name)
    }
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`), lower
/// case and without brackets, or `None` when it is malformed.
pub(crate) fn host_name(host: &str) -> Option<String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (v6, None),
            after => (v6, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    if name.is_empty() {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Checks one `[api] allowed_hosts` entry: a DNS name or an IP address, no
/// port (any port is served), returned in lower case.
pub fn allowed_host(entry: &str) -> Result<String, String> {
    let bare = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(bare.to_ascii_lowercase());
    }
    let name_ok = !entry.is_empty()
        && entry.len() <= 253
        && entry.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if name_ok {
        Ok(entry.to_ascii_lowercase())
    } else {
        Err(format!(
            "{entry:?} is not a host name or IP address (give names without port or scheme, e.g. navigator.example.com)"
        ))
    }
}

/// Middleware: refuses requests for hosts [`HostCheck::allows`] does not.
pub async fn check(
    State(host_check): State<std::sync::Arc<HostCheck>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        Some(host) if !host_check.allows(&host) => refuse(&host, request.uri()),
        _ => next.run(request).await,
    }
}

fn refuse(host: &str, uri: &Uri) -> Response {
    // Shown escaped by JSON; cut so a huge header does not echo back whole.
    let shown: String = host.chars().take(100).collect();
    tracing::info!(host = %shown, path = %uri.path(), "request for a host not served here refused ([api] allowed_hosts)");
    let status = StatusCode::MISDIRECTED_REQUEST;
    let body = ErrorBody::new(
        status.as_u16(),
        "Misdirected Request",
        format!(
            "host {shown:?} is not served here: only localhost, IP addresses and the names in \
             [api] allowed_hosts are accepted (a protection against DNS rebinding); \
             add this name to [api] allowed_hosts if clients really use it"
        ),
    );
    (status, Json(body)).into_response()
}

/// Documents the 421 answer on every operation of the OpenAPI document.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    crate::openapi_auth::add_error_everywhere(
        doc,
        "421",
        "MisdirectedRequest",
        "The Host header names a host this server does not answer for: with noauth (or with \
         [api] allowed_hosts set) only localhost, IP addresses, [api] allowed_hosts and the \
         host of [DEFAULT] public_endpoint are served (a protection against DNS rebinding). \
         Nothing was changed.",
        Vec::new(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noauth_serves_loopback_names_addresses_and_allowed_hosts() {
        let check = HostCheck::new(AuthStrategy::NoAuth, &["nav.example.com".to_owned()]);
        for host in [
            "localhost",
            "LOCALHOST:9797",
            "127.0.0.1",
            "127.0.0.1:9797",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9797",
            "192.0.2.7:9797",
            "nav.example.com",
            "Nav.Example.COM:443",
        ] {
            assert!(check.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9797",
            "foo.localhost",
            "localhost.",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "nav.example.com.evil.example",
            "[::1",
            "[evil]:80",
            "localhost:",
            "localhost:80x",
            ":80",
            "",
        ] {
            assert!(!check.allows(host), "{host}");
        }
    }

    #[test]
    fn keystone_checks_only_when_hosts_are_configured() {
        assert_eq!(HostCheck::new(AuthStrategy::Keystone, &[]), HostCheck::Off);
        assert!(HostCheck::Off.allows("evil.example"));
        let check = HostCheck::new(AuthStrategy::Keystone, &["nav".to_owned()]);
        assert!(check.allows("nav:9797") && check.allows("10.0.0.5"));
        assert!(!check.allows("evil.example"));
    }

    #[test]
    fn allowed_host_entries_are_names_or_addresses() {
        assert_eq!(allowed_host("Nav.Example.com").unwrap(), "nav.example.com");
        assert_eq!(allowed_host("[2001:DB8::1]").unwrap(), "2001:db8::1");
        assert_eq!(allowed_host("my_host").unwrap(), "my_host");
        for bad in [
            "nav.example.com:9797",
            "http://nav",
            "*.example.com",
            "-x.example",
            "a..b",
            "",
        ] {
            assert!(allowed_host(bad).is_err(), "{bad}");
        }
    }
}
