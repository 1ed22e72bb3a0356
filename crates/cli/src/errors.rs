//! Turning failures into one readable line on stderr and an exit status:
//! 2 for usage errors found after parsing, 1 for everything else.
//!
//! Users see what the API said (or why it could not be reached), never Rust
//! debug output; `--debug` adds the chain of causes underneath.

use std::process::ExitCode;

use navigator_api::ClientError;
use navigator_keystone::auth::AuthError;

/// A mistake in the command line that clap cannot catch by itself (e.g.
/// `forward set ID` with nothing to set); exits 2 like clap's own errors.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Where to point users whose endpoint is wrong.
const ENDPOINT_HINT: &str = "set --os-endpoint or NAVIGATOR_ENDPOINT";

/// One line for a client error, e.g. `Conflict: external port 20022 is in use
/// (HTTP 409, request req-1)` or `cannot reach Navigator at ...`.
pub fn describe(err: &ClientError) -> String {
    match err {
        ClientError::Api {
            status,
            title,
            message,
            request_id,
        } => {
            let request = request_id
                .as_deref()
                .map(|id| format!(", request {id}"))
                .unwrap_or_default();
            if title.is_empty() {
                format!("{message} (HTTP {status}{request})")
            } else {
                format!("{title}: {message} (HTTP {status}{request})")
            }
        }
        ClientError::Unreachable { endpoint, source } => {
            let reason = if source.is_timeout() {
                "timed out".to_owned()
            } else {
                unreachable_reason(source)
            };
            if reason.contains("certificate") {
                format!(
                    "cannot reach Navigator at {endpoint}: {reason} — trust its CA with --os-cacert or OS_CACERT (--insecure skips the check, for testing only)"
                )
            } else if source.is_connect() || source.is_timeout() {
                format!(
                    "cannot reach Navigator at {endpoint}: {reason} — is navigator-server running? {ENDPOINT_HINT}"
                )
            } else {
                format!("lost the connection to Navigator at {endpoint}: {reason}")
            }
        }
        ClientError::InvalidEndpoint { .. } => format!("{err} ({ENDPOINT_HINT})"),
        ClientError::BadResponse { endpoint, .. } => {
            format!("{err} (is {endpoint} a Navigator API endpoint? {ENDPOINT_HINT})")
        }
    }
}

/// The innermost useful cause of a transport error: reqwest's own message
/// ("error sending request for url") says nothing about what went wrong.
fn unreachable_reason(err: &(dyn std::error::Error + 'static)) -> String {
    // Walks down the causes looking for the socket error.
    let mut deepest = err;
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let known = match io.kind() {
                ErrorKind::ConnectionRefused => Some("connection refused"),
                ErrorKind::ConnectionReset => Some("connection reset"),
                ErrorKind::TimedOut => Some("timed out"),
                _ => None,
            };
            if let Some(known) = known {
                return known.to_owned();
            }
        }
        deepest = current;
        cause = current.source();
    }
    deepest.to_string()
}

/// One line for a Keystone error whose own text would be reqwest's
/// uninformative "error sending request"; `None` when its text is fine.
fn describe_auth(err: &AuthError) -> Option<String> {
    match err {
        AuthError::Unreachable { url, source } => {
            let reason = if source.is_timeout() {
                "timed out".to_owned()
            } else {
                unreachable_reason(source)
            };
            let hint = if reason.contains("certificate") {
                "trust its CA with --os-cacert or OS_CACERT; --insecure skips the check, for testing only"
            } else {
                "check --os-auth-url, OS_AUTH_URL or auth_url in clouds.yaml"
            };
            Some(format!("cannot reach Keystone at {url}: {reason} ({hint})"))
        }
        _ => None,
    }
}

/// The message for any failure of a command.
pub fn message(err: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in err.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            // The description already says everything its causes would.
            parts.push(describe(client));
            break;
        }
        if let Some(text) = cause.downcast_ref::<AuthError>().and_then(describe_auth) {
            parts.push(text);
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

/// Prints a failure to stderr and picks the exit status.
pub fn report(err: &anyhow::Error, debug: bool) -> ExitCode {
    if let Some(usage) = err.downcast_ref::<UsageError>() {
        eprintln!("error: {usage}\n\nFor more information, try '--help'.");
        return ExitCode::from(2);
    }
    eprintln!("{}", message(err));
    if debug {
        // anyhow's chain includes the transport's own causes (hyper, io).
        for (depth, cause) in err.chain().enumerate() {
            eprintln!("  [{depth}] {cause}");
        }
    }
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(request_id: Option<&str>) -> ClientError {
        ClientError::Api {
            status: 409,
            title: "Conflict".into(),
            message: "external port 20022 is in use".into(),
            request_id: request_id.map(str::to_owned),
        }
    }

    #[test]
    fn api_errors_show_title_message_status_and_request() {
        assert_eq!(
            describe(&api(Some("req-1"))),
            "Conflict: external port 20022 is in use (HTTP 409, request req-1)"
        );
        assert_eq!(
            describe(&api(None)),
            "Conflict: external port 20022 is in use (HTTP 409)"
        );
    }

    #[test]
    fn context_is_kept_and_client_errors_described_once() {
        let err = anyhow::Error::new(api(Some("req-1"))).context("cannot create the forward");
        assert_eq!(
            message(&err),
            "cannot create the forward: Conflict: external port 20022 is in use (HTTP 409, request req-1)"
        );
    }

    #[test]
    fn exit_statuses() {
        let usage = anyhow::Error::new(UsageError("nothing to set".into()));
        assert_eq!(report(&usage, false), ExitCode::from(2));
        assert_eq!(
            report(&anyhow::Error::new(api(None)), false),
            ExitCode::from(1)
        );
    }
}
