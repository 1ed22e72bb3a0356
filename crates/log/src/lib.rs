//! Logging of `navigator-server` and `navigator-agent`, set up from the
//! oslo.log options both read from `[DEFAULT]` (`debug`, `log_format`,
//! `log_file`, `use_journal`) and changed at run time on SIGHUP.
//!
//! Its own crate because both binaries need it and neither may depend on the
//! other for it: the agent is below the server in the dependency graph, and
//! `navigator-core` has no I/O by rule.
//!
//! - The level filter sits behind a reload layer, so `debug` can be toggled
//!   without a restart; `RUST_LOG`, when set, wins over `debug` (as before).
//! - `log_file` is held open in append mode behind a lock and re-opened by
//!   [`Logging::reload`], which is what logrotate's move-then-HUP needs.
//! - `log_format = json` writes one object per line ([`json`]); the request
//!   ids and project of the enclosing request span are top-level keys.
//! - `use_journal` sends journald's native fields; without a reachable
//!   journald the process says so on stderr and logs as if it were unset.

mod file;
pub mod json;

use std::path::{Path, PathBuf};

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::file::SharedFile;

/// The keys of `[DEFAULT]` this crate reads, with their defaults as written
/// in the file (the server's option table and the agent's defaults list
/// them too; their tests compare).
pub const OPTIONS: &[(&str, &str)] = &[
    ("debug", "false"),
    ("log_format", "text"),
    ("log_file", ""),
    ("use_journal", "false"),
];

/// Help text of `[DEFAULT] debug`, for the sample.
pub const DEBUG_HELP: &str = "Log at debug level. Changed by SIGHUP without a restart. The RUST_LOG environment variable, when set, replaces this level (and SIGHUP leaves it alone).";
/// Help text of `[DEFAULT] log_format`.
pub const LOG_FORMAT_HELP: &str = "text: human-readable lines (timestamp, level, the request's ids and project, target, message, fields). json: one JSON object per line with timestamp, level, target, message, fields, and request_id, global_request_id and project for events inside an API request. Needs a restart to change.";
/// Help text of `[DEFAULT] log_file`.
pub const LOG_FILE_HELP: &str = "File to append log lines to instead of stderr, e.g. /var/log/navigator/navigator-server.log. It is created if missing; a file that cannot be opened stops start-up naming the path and the error. SIGHUP re-opens it (for logrotate: move the file, then send SIGHUP), and a new path here takes effect then. Only the running services write it: navigator-server's other commands (db sync, config check, ...) log to stderr and only check that it could be opened, so that a file they would create as root does not lock the service's user out. Default: stderr.";
/// Help text of `[DEFAULT] use_journal`.
pub const USE_JOURNAL_HELP: &str = "Log to journald with its native fields (MESSAGE, PRIORITY as syslog's, TARGET, CODE_FILE, CODE_LINE, SYSLOG_IDENTIFIER, and the event's and its request's fields in upper case: REQUEST_ID, GLOBAL_REQUEST_ID, PROJECT, ...) instead of stderr; with log_file set, that file is written too. When journald's socket (/run/systemd/journal/socket) cannot be reached the process says so on stderr at start-up and logs as if this were false. Needs a restart to change.";

/// `log_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Parses `log_format` as written in the file.
pub fn log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".into()),
    }
}

/// Parses `log_file` as written in the file: empty is unset.
pub fn log_file(value: &str) -> Result<Option<PathBuf>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.ends_with('/') {
        return Err("expected a file path, not a directory".into());
    }
    Ok(Some(PathBuf::from(value)))
}

/// The logging options of `[DEFAULT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    pub debug: bool,
    pub format: LogFormat,
    pub log_file: Option<PathBuf>,
    pub use_journal: bool,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            debug: false,
            format: LogFormat::Text,
            log_file: None,
            use_journal: false,
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open [DEFAULT] log_file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a logger is already installed in this process")]
    AlreadySet,
}

/// Checks that `path` could be logged to, without creating it: an existing
/// file must open for appending, a missing one needs its directory. For
/// commands an operator runs (often as root), which log to stderr instead:
/// a log file they created would belong to them, and the service, running
/// as its own user, could then not open it.
pub fn check_log_file(path: &Path) -> Result<(), LogError> {
    let error = |source| LogError::File {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(error);
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(error(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", parent.display()),
        ))),
        Err(e) => Err(error(e)),
    }
}

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

/// The installed logger: what [`Logging::reload`] can change.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Directives added after the level, e.g. `sqlx=warn`.
    quiet: &'static str,
    /// `RUST_LOG` was set at start: it keeps deciding the level.
    env_override: bool,
    /// The open `log_file`, when one is written.
    file: Option<SharedFile>,
    /// The options in force (the file path as last opened).
    current: std::sync::Mutex<LogOptions>,
}

/// The filter `debug` means, with the per-crate directives in `quiet`.
fn directives(debug: bool, quiet: &str) -> EnvFilter {
    let level = if debug { "debug" } else { "info" };
    EnvFilter::new(if quiet.is_empty() {
        level.to_owned()
    } else {
        format!("{level},{quiet}")
    })
}

/// Installs the process's logger. `program` names the process in the
/// messages written before logging works; `quiet` holds the directives
/// that keep chatty dependencies down (e.g. `"sqlx=warn,hyper=info"`).
pub fn init(program: &str, options: &LogOptions, quiet: &'static str) -> Result<Logging, LogError> {
    let (filter, env_override) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (directives(options.debug, quiet), false),
    };
    let (filter, handle) = reload::Layer::new(filter);

    let file = match &options.log_file {
        Some(path) => Some(SharedFile::open(path)?),
        None => None,
    };
    let mut outputs: Vec<Output> = Vec::new();
    let mut journal_problem = None;
    if options.use_journal {
        match tracing_journald::layer() {
            Ok(layer) => outputs.push(Box::new(journal(layer))),
            Err(e) => journal_problem = Some(e),
        }
    }
    if let Some(file) = &file {
        outputs.push(format_layer(
            options.format,
            BoxMakeWriter::new(file.clone()),
            false,
        ));
    }
    if outputs.is_empty() {
        let ansi = options.format == LogFormat::Text
            && std::io::IsTerminal::is_terminal(&std::io::stderr());
        outputs.push(format_layer(
            options.format,
            BoxMakeWriter::new(std::io::stderr),
            ansi,
        ));
    }
    if let Some(e) = &journal_problem {
        // Said before the logger exists as well, so that it is seen even
        // when the log goes to a file nobody watches yet.
        eprintln!(
            "{program}: [DEFAULT] use_journal = true but journald cannot be reached at /run/systemd/journal/socket ({e}); logging to {} instead",
            destination(options.log_file.as_deref())
        );
    }
    Registry::default()
        .with(filter)
        .with(outputs)
        .try_init()
        .map_err(|_| LogError::AlreadySet)?;
    if let Some(e) = journal_problem {
        tracing::warn!(
            error = %e,
            "[DEFAULT] use_journal = true but journald cannot be reached; logging to {} instead",
            destination(options.log_file.as_deref())
        );
    }
    if env_override {
        tracing::info!("RUST_LOG is set: it decides the log level instead of [DEFAULT] debug");
    }
    Ok(Logging {
        filter: handle,
        quiet,
        env_override,
        file,
        current: std::sync::Mutex::new(options.clone()),
    })
}

/// journald's layer with oslo.log's conventions: fields without a prefix
/// (`REQUEST_ID`, `GLOBAL_REQUEST_ID`, `PROJECT`, as oslo's journal handler
/// names them, upper case) and syslog's priorities (INFO is 6, DEBUG 7).
fn journal(layer: tracing_journald::Layer) -> tracing_journald::Layer {
    use tracing_journald::{Priority, PriorityMappings};
    layer
        .with_field_prefix(None)
        .with_priority_mappings(PriorityMappings {
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
            ..PriorityMappings::new()
        })
}

fn destination(log_file: Option<&Path>) -> String {
    match log_file {
        Some(path) => path.display().to_string(),
        None => "stderr".into(),
    }
}

fn format_layer(format: LogFormat, writer: BoxMakeWriter, ansi: bool) -> Output {
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLines)
            .with_writer(writer)
            .boxed(),
    }
}

impl Logging {
    /// Applies what changed from the options in force to `new`: the level
    /// (`debug`), and re-opens `log_file` (also when unchanged: logrotate
    /// moved it). What cannot change in a running process (`log_format`,
    /// `use_journal`, a log file where there was none or the reverse) is
    /// logged as needing a restart. Never fails: a file that cannot be
    /// opened keeps the old one, with an error logged.
    pub fn reload(&self, new: &LogOptions) {
        let mut current = match self.current.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        // The file first, so that what follows is logged into the new one.
        if let (Some(file), Some(path)) = (&self.file, &new.log_file) {
            match file.reopen(path) {
                Ok(()) => {
                    if current.log_file.as_ref() != Some(path) {
                        tracing::info!(log_file = %path.display(), "option [DEFAULT] log_file changed; logging there now");
                    }
                    current.log_file = Some(path.clone());
                }
                Err(e) => tracing::error!(
                    "cannot re-open [DEFAULT] log_file {}: {e}; still logging to {}",
                    path.display(),
                    destination(current.log_file.as_deref())
                ),
            }
        } else if self.file.is_some() != new.log_file.is_some() {
            restart_needed("log_file");
        }
        if new.debug != current.debug {
            if self.env_override {
                tracing::info!(
                    "option [DEFAULT] debug changed; RUST_LOG is set and keeps deciding the log level"
                );
            } else {
                match self.filter.reload(directives(new.debug, self.quiet)) {
                    Ok(()) => {
                        tracing::info!(debug = new.debug, "option [DEFAULT] debug changed; applied")
                    }
                    Err(e) => tracing::error!("cannot change the log level: {e}"),
                }
            }
            current.debug = new.debug;
        }
        if new.format != current.format {
            restart_needed("log_format");
        }
        if new.use_journal != current.use_journal {
            restart_needed("use_journal");
        }
    }
}

fn restart_needed(key: &str) {
    tracing::warn!("option [DEFAULT] {key} changed; takes effect after a restart");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values() {
        assert_eq!(log_format("json"), Ok(LogFormat::Json));
        assert_eq!(log_format("text"), Ok(LogFormat::Text));
        assert_eq!(log_format("JSON"), Err("expected text or json".to_owned()));
        assert_eq!(log_file(""), Ok(None));
        assert_eq!(
            log_file("/var/log/navigator/x.log"),
            Ok(Some(PathBuf::from("/var/log/navigator/x.log")))
        );
        assert!(log_file("/var/log/").is_err());
    }
}
