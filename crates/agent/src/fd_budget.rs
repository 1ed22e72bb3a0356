//! The open-file budget. One `RLIMIT_NOFILE` is shared by the process's own
//! needs (database pool, RabbitMQ, Keystone, logs), the API's connections
//! (`navigator-server` only) and the relay; it is split at start-up so that
//! no part can starve another: a few hundred idle API sockets must not leave
//! the relay without descriptors, nor relayed connections the API.
//!
//! `navigator-server --all-in-one` and `navigator-agent` both split it here,
//! so the same file means the same caps to both.

/// Open files kept for the process itself: database pool, RabbitMQ,
/// Keystone and Nova connections, log files, subprocess pipes, the API
/// listener. Generous: the pools are a few dozen at most.
pub const RESERVED: usize = 256;
/// Bounds of the derived API connection cap.
const API_MIN: usize = 64;
const API_MAX: usize = 1024;
/// The smallest relay share worth starting with.
const RELAY_MIN: usize = 128;
/// Ceiling applied when the limit is unlimited or huge: the kernel's default
/// `fs.nr_open`, beyond which no process gets descriptors anyway.
const LIMIT_CEILING: u64 = 1 << 20;

/// How the limit is split. Every count is in open files except
/// `relay_connections` and `udp_sessions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// `RLIMIT_NOFILE` (soft) in force.
    pub limit: usize,
    pub reserved: usize,
    /// API connections (one file each); 0 for `navigator-agent`.
    pub api: usize,
    /// What the relay may hold in all: listeners, two per TCP connection,
    /// one per UDP session, two per splice pipe.
    pub relay_fds: usize,
    /// `[relay] max_connections` in force.
    pub relay_connections: usize,
    /// `[relay] max_udp_sessions` in force.
    pub udp_sessions: usize,
}

/// What the configuration asks for; `None` derives the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wanted {
    /// `None`: this process serves no API (`navigator-agent`).
    pub api: Option<Option<usize>>,
    pub relay_connections: Option<usize>,
    pub udp_sessions: Option<usize>,
}

/// A configuration the open-file limit cannot hold; the message names the
/// option, the limit and what is left.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BudgetError(String);

impl FdBudget {
    /// Splits `limit` (`None` = unlimited) as `wanted` asks.
    pub fn split(limit: Option<u64>, wanted: Wanted) -> Result<FdBudget, BudgetError> {
        let limit = usize::try_from(limit.unwrap_or(LIMIT_CEILING).min(LIMIT_CEILING))
            .unwrap_or(usize::MAX);
        let api_min = if wanted.api.is_some() { API_MIN } else { 0 };
        let needed = RESERVED + api_min + RELAY_MIN;
        if limit < needed {
            return Err(BudgetError(format!(
                "the open-file limit (RLIMIT_NOFILE) is {limit}; at least {needed} are needed \
                 ({RESERVED} for the process, {api_min} for API connections, {RELAY_MIN} for the relay): \
                 raise it (LimitNOFILE= in the systemd unit, ulimit -n)"
            )));
        }
        let available = limit - RESERVED;
        let api = match wanted.api {
            None => 0,
            Some(None) => (available / 8).clamp(API_MIN, API_MAX),
            Some(Some(n)) if n + RELAY_MIN > available => {
                return Err(BudgetError(format!(
                    "[api] max_connections = {n} does not fit the open-file limit: RLIMIT_NOFILE = {limit} \
                     leaves {available} after {RESERVED} for the process, and the relay needs at least {RELAY_MIN}; \
                     lower it (0 derives it) or raise the limit"
                )));
            }
            Some(Some(n)) => n,
        };
        let relay_fds = available - api;
        let relay_connections = match wanted.relay_connections {
            None => relay_fds / 2,
            Some(n) if n.saturating_mul(2) > relay_fds => {
                let api = if api > 0 {
                    format!(" and {api} for API connections")
                } else {
                    String::new()
                };
                return Err(BudgetError(format!(
                    "[relay] max_connections = {n} needs {} open files (two per connection), but \
                     RLIMIT_NOFILE = {limit} leaves the relay {relay_fds} after {RESERVED} for the process\
                     {api}; lower it (0 derives it) or raise the limit",
                    n.saturating_mul(2)
                )));
            }
            Some(n) => n,
        };
        let udp_sessions = match wanted.udp_sessions {
            None => relay_fds / 4,
            Some(n) if n > relay_fds => {
                return Err(BudgetError(format!(
                    "[relay] max_udp_sessions = {n} needs {n} open files, but RLIMIT_NOFILE = {limit} \
                     leaves the relay {relay_fds}; lower it (0 derives it) or raise the limit"
                )));
            }
            Some(n) => n,
        };
        Ok(FdBudget {
            limit,
            reserved: RESERVED,
            api,
            relay_fds,
            relay_connections,
            udp_sessions,
        })
    }
}

impl std::fmt::Display for FdBudget {
    /// The start-up line, e.g. `limit 20000 = 256 reserved + 1024 api +
    /// 18720 relay (9360 connections, 4680 UDP sessions)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "limit {} = {} reserved + ", self.limit, self.reserved)?;
        if self.api > 0 {
            write!(f, "{} api + ", self.api)?;
        }
        write!(
            f,
            "{} relay ({} connections, {} UDP sessions)",
            self.relay_fds, self.relay_connections, self.udp_sessions
        )
    }
}

impl FdBudget {
    /// Puts the relay's caps in force in `options`.
    pub fn apply(&self, options: &mut crate::options::BackendOptions) {
        options.max_connections = Some(self.relay_connections);
        options.max_udp_sessions = Some(self.udp_sessions);
        options.relay_fds = Some(self.relay_fds);
    }
}

/// The soft `RLIMIT_NOFILE` in force (`None` = unlimited), for messages.
pub fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (at most 2^20) and
/// returns the soft limit then in force (`None` = unlimited). Distributions
/// start services with a soft limit of 1024 for the sake of `select(2)`,
/// which nothing here uses; the hard limit is what the operator allowed.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let ceiling = limit.maximum.unwrap_or(LIMIT_CEILING).min(LIMIT_CEILING);
    if limit.current.is_some_and(|current| current < ceiling) {
        let before = limit.current;
        limit.current = Some(ceiling);
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::info!(
                "raised the open-file limit (RLIMIT_NOFILE) from {} to {ceiling}, the hard limit",
                before.unwrap_or_default()
            ),
            Err(e) => tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE"),
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(api: Option<usize>, relay: Option<usize>) -> Wanted {
        Wanted {
            api: Some(api),
            relay_connections: relay,
            udp_sessions: None,
        }
    }

    #[test]
    fn derived_split_of_twenty_thousand() {
        let budget = FdBudget::split(Some(20_000), server(None, None)).unwrap();
        assert_eq!(
            budget,
            FdBudget {
                limit: 20_000,
                reserved: 256,
                api: 1024,
                relay_fds: 18_720,
                relay_connections: 9360,
                udp_sessions: 4680,
            }
        );
        assert_eq!(
            budget.to_string(),
            "limit 20000 = 256 reserved + 1024 api + 18720 relay (9360 connections, 4680 UDP sessions)"
        );
    }

    #[test]
    fn small_and_unlimited_limits() {
        // 1024 (a distribution's default soft limit): the API gets its minimum.
        let budget = FdBudget::split(Some(1024), server(None, None)).unwrap();
        assert_eq!((budget.api, budget.relay_fds), (96, 672));
        assert_eq!(budget.relay_connections, 336);
        // Unlimited is taken as the kernel's default ceiling.
        let budget = FdBudget::split(None, server(None, None)).unwrap();
        assert_eq!(budget.limit, 1 << 20);
        assert_eq!(budget.api, 1024);
        // The agent has no API share.
        let agent = Wanted::default();
        let budget = FdBudget::split(Some(20_000), agent).unwrap();
        assert_eq!((budget.api, budget.relay_fds), (0, 19_744));
        assert_eq!(
            budget.to_string(),
            "limit 20000 = 256 reserved + 19744 relay (9872 connections, 4936 UDP sessions)"
        );
    }

    #[test]
    fn explicit_values_are_kept_when_they_fit() {
        let budget = FdBudget::split(Some(20_000), server(Some(500), Some(9000))).unwrap();
        assert_eq!(budget.api, 500);
        assert_eq!(budget.relay_fds, 19_244);
        assert_eq!(budget.relay_connections, 9000);
    }

    #[test]
    fn refuses_what_the_limit_cannot_hold() {
        let err = FdBudget::split(Some(20_000), server(Some(19_700), None)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("[api] max_connections = 19700 does not fit"),
            "{err}"
        );
        let err = FdBudget::split(Some(20_000), server(None, Some(10_000))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[relay] max_connections = 10000 needs 20000 open files (two per connection), but \
             RLIMIT_NOFILE = 20000 leaves the relay 18720 after 256 for the process and 1024 for \
             API connections; lower it (0 derives it) or raise the limit"
        );
        let wanted = Wanted {
            udp_sessions: Some(20_000),
            ..Wanted::default()
        };
        let err = FdBudget::split(Some(20_000), wanted).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("[relay] max_udp_sessions = 20000"),
            "{err}"
        );
        let err = FdBudget::split(Some(256), server(None, None)).unwrap_err();
        assert!(err.to_string().contains("at least 448 are needed"), "{err}");
    }
}
