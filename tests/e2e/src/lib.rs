//! Helpers for the end-to-end tests: locating the real `navigator-server` and
//! `navigator` binaries, starting an all-in-one server on its own data
//! directory and port range, running the CLI against it, tagged TCP/UDP echo
//! servers, raw HTTP requests, and bounded polling.
//!
//! Everything here talks to 127.0.0.1 or ::1 only, and every wait is bounded.

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod auth;
pub mod browser;

pub use auth::{Auth, KeystoneProject, KeystoneSettings};

/// How long a server may take to print its API address.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one CLI invocation may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket read timeout for traffic through a forward.
pub const IO_TIMEOUT: Duration = Duration::from_millis(1500);

/// First and last port of the pool the test port ranges are carved from.
///
/// Deliberately below Linux's default ephemeral range (32768-60999): ports in
/// there are handed out to outgoing connections at any moment (a busy
/// benchmark on the same host can hold thousands), so a range that was free
/// when probed could be taken before the server binds it. Ports here are only
/// ever taken by explicit binds, which the probe in [`claim_port_range`] sees.
const POOL_FIRST: u16 = 10000;
const POOL_LAST: u16 = 19999;
/// Ports per test.
pub const RANGE_LEN: u16 = 200;

// ---------------------------------------------------------------- binaries

/// The directory holding the workspace binaries: the parent of the `deps`
/// directory the test executable runs from (`target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    let deps = exe.parent().expect("test executable has no directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has no parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// The path of workspace binary `name`; panics (never skips) when it is
/// missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: the end-to-end tests drive the real binaries; run `cargo build --workspace --bins` \
         (with the same profile and CARGO_TARGET_DIR as the tests) first",
        path.display()
    );
    path
}

// ---------------------------------------------------------------- polling

/// Calls `f` until it returns `Some`, at most for `timeout`; panics with
/// `what` and the last attempt's description otherwise.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last attempt: {last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------- port ranges

/// Slots (of [`RANGE_LEN`] ports) already handed out in this process.
static CLAIMED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

fn slot_count() -> usize {
    usize::from((POOL_LAST - POOL_FIRST + 1) / RANGE_LEN)
}

/// Whether every port of `first..=last` can be bound right now, for TCP and
/// UDP on 127.0.0.1 (and on ::1 when it exists).
fn range_is_free(first: u16, last: u16) -> bool {
    let v6 = ipv6_available();
    (first..=last).all(|port| {
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        let v6addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        TcpListener::bind(v4).is_ok()
            && UdpSocket::bind(v4).is_ok()
            && (!v6 || (TcpListener::bind(v6addr).is_ok() && UdpSocket::bind(v6addr).is_ok()))
    })
}

/// A range of [`RANGE_LEN`] ports inside the pool that no other test of this
/// process uses, that is free on the host right now and that lies outside the
/// host's ephemeral port range. The starting
/// slot depends on the process id, so concurrent test processes tend to
/// start apart too.
pub fn claim_port_range() -> (u16, u16) {
    let slots = slot_count();
    let start =
        (std::process::id() as usize).wrapping_mul(7) + NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    for step in 0..slots {
        let slot = (start + step) % slots;
        {
            let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
            if claimed.contains(&slot) {
                continue;
            }
            claimed.push(slot);
        }
        let offset = u16::try_from(slot).expect("few slots") * RANGE_LEN;
        let first = POOL_FIRST + offset;
        let last = first + RANGE_LEN - 1;
        if !overlaps_ephemeral(first, last) && range_is_free(first, last) {
            return (first, last);
        }
        // Leave a busy slot claimed: nobody in this process should try it.
    }
    panic!(
        "no free range of {RANGE_LEN} ports left in {POOL_FIRST}-{POOL_LAST} outside the ephemeral port range"
    );
}

/// Whether `first..=last` overlaps `net.ipv4.ip_local_port_range`.
fn overlaps_ephemeral(first: u16, last: u16) -> bool {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) => first <= high && low <= last,
        _ => false,
    }
}

/// Whether ::1 can be bound on this host.
pub fn ipv6_available() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

// ---------------------------------------------------------------- server

/// A data directory and configuration file for one test; survives server
/// restarts.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config_file: PathBuf,
    pub port_range: (u16, u16),
    /// How the server authenticates and the CLI logs in.
    pub auth: Auth,
}

impl Env {
    /// A fresh temp dir with a config file giving this test its own port
    /// range, fast heartbeats, the `auth_strategy` of `auth`, and `extra`
    /// appended (more INI text).
    pub fn new(name: &str, auth: &Auth, extra: &str) -> Env {
        Env::with_agent_options(name, auth, "", extra)
    }

    /// Like [`Env::new`], with `agent` (INI lines) added to `[agent]`.
    pub fn with_agent_options(name: &str, auth: &Auth, agent: &str, extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("navigator-e2e-{name}-"))
            .tempdir()
            .expect("cannot create a temp dir");
        let port_range = claim_port_range();
        let external = if ipv6_available() {
            "127.0.0.1,::1"
        } else {
            "127.0.0.1"
        };
        let (auth_default, auth_sections) = auth.config();
        let text = format!(
            "[DEFAULT]\nhost = e2e-{name}\n{auth_default}\n[agent]\nport_range = {}-{}\nexternal_addresses = {external}\nreport_interval = 1\n{agent}\n\n{auth_sections}\n{extra}\n",
            port_range.0, port_range.1
        );
        let config_file = dir.path().join("navigator.conf");
        std::fs::write(&config_file, text).expect("cannot write the config file");
        Env {
            dir,
            config_file,
            port_range,
            auth: auth.clone(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `navigator-server --all-in-one` on this environment; its CLI
    /// runs and raw requests authenticate as [`Env::auth`] says.
    pub fn start(&self) -> Server {
        let mut server = Server::start(self.data_dir(), &self.config_file);
        server.auth = self.auth.clone();
        server
    }
}

/// Output of a child process collected by a background thread.
type Collected = Arc<Mutex<String>>;

fn collect_lines(
    pipe: impl std::io::Read + Send + 'static,
    sink: Collected,
    lines: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        let reader = BufReader::new(pipe);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &lines {
                let _ = tx.send(line.clone());
            }
            let mut text = sink.lock().unwrap_or_else(|p| p.into_inner());
            text.push_str(&line);
            text.push('\n');
        }
    });
}

/// A running `navigator-server --all-in-one`, stopped (SIGTERM, then SIGKILL
/// after [`STOP_TIMEOUT`]) when dropped.
pub struct Server {
    child: Option<Child>,
    /// Base URL of the API, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    stdout: Collected,
    stderr: Collected,
    /// How [`Server::cli`] logs in and [`Server::http`] authenticates.
    pub auth: Auth,
}

impl Server {
    /// Starts `navigator-server --all-in-one` on `data_dir` and `config_file`.
    pub fn start(data_dir: &Path, config_file: &Path) -> Server {
        Server::start_args(&[
            "--all-in-one".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--config-file".as_ref(),
            config_file.as_os_str(),
            "--bind-port".as_ref(),
            "0".as_ref(),
        ])
    }

    /// Starts `navigator-server` in cluster mode (no `--all-in-one`; the
    /// configuration names a rabbit:// transport and a database).
    pub fn start_cluster(config_file: &Path) -> Server {
        Server::start_args(&[
            "--config-file".as_ref(),
            config_file.as_os_str(),
            "--bind-port".as_ref(),
            "0".as_ref(),
        ])
    }

    /// Starts `navigator-server ARGS` and waits for its API banner line.
    pub fn start_args(args: &[&std::ffi::OsStr]) -> Server {
        Server::start_args_with(args, |_| {})
    }

    /// Like [`Server::start_args`], with `adjust` changing the command
    /// first (e.g. removing `RUST_LOG`, which overrides `[DEFAULT] debug`).
    pub fn start_args_with(args: &[&std::ffi::OsStr], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut command = Command::new(binary("navigator-server"));
        command.args(args).env("RUST_LOG", "info");
        adjust(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start navigator-server");
        let stdout: Collected = Arc::default();
        let stderr: Collected = Arc::default();
        let (tx, rx) = mpsc::channel();
        collect_lines(
            child.stdout.take().expect("piped"),
            stdout.clone(),
            Some(tx),
        );
        collect_lines(child.stderr.take().expect("piped"), stderr.clone(), None);
        let mut server = Server {
            child: Some(child),
            url: String::new(),
            stdout,
            stderr,
            auth: Auth::Noauth,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = api_url(&line) {
                        server.url = url;
                        return server;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "navigator-server printed no API line within {START_TIMEOUT:?}\n{}",
                        server.logs()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.wait_exit(Duration::from_secs(5));
                    panic!(
                        "navigator-server exited ({status:?}) before serving\n{}",
                        server.logs()
                    )
                }
            }
        }
    }

    /// What the server printed so far, for failure messages.
    pub fn logs(&self) -> String {
        let out = self
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let err = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!("--- server stdout ---\n{out}--- server stderr ---\n{err}---")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the server has exited (crashed, or stopped), `None`
    /// while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => return None,
            }
        }
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] (SIGKILL after that).
    /// Returns the exit status if the server exited by itself.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let status = self.wait_exit(STOP_TIMEOUT);
        if status.is_none()
            && let Some(child) = self.child.as_mut()
        {
            eprintln!(
                "navigator-server (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
        status
    }

    /// Runs the CLI against this server, logged in as [`Server::auth`].
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        run_cli_as(&self.url, &self.auth, args)
    }

    /// Runs the CLI and panics (with the server log) unless it succeeded.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.success(),
            "`navigator {}` failed:\n{out}\n{}",
            args.join(" "),
            self.logs()
        );
        out.stdout
    }

    /// `forward create ... -f json`: the new forward's fields.
    pub fn create_forward(&self, args: &[&str]) -> Value {
        let mut all = vec!["forward", "create"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-f", "json"]);
        parse_json(&self.cli_ok(&all))
    }

    /// `forward create` of a `protocol` forward to `127.0.0.1:port` (a
    /// test's echo server), with `extra` arguments.
    pub fn create_loopback_forward(&self, protocol: &str, port: &str, extra: &[&str]) -> Value {
        let mut args = vec![
            "--protocol",
            protocol,
            "--internal-ip-address",
            "127.0.0.1",
            "--internal-port",
            port,
        ];
        args.extend_from_slice(extra);
        self.create_forward(&args)
    }

    /// `forward show ID -f json`.
    pub fn show_forward(&self, id: &str) -> Value {
        parse_json(&self.cli_ok(&["forward", "show", id, "-f", "json"]))
    }

    /// `forward list ARGS -f value -c id`: the ids, in the order shown.
    pub fn forward_ids(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["forward", "list"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-f", "value", "-c", "id"]);
        self.cli_ok(&all).lines().map(str::to_owned).collect()
    }

    /// Number of forwards `forward list` shows.
    pub fn forward_count(&self) -> usize {
        self.forward_ids(&[]).len()
    }

    /// Raw HTTP/1.1 request to the API, with the `X-Auth-Token` of
    /// [`Server::auth`] (none with noauth).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let token = self.auth.token();
        let mut all = headers.to_vec();
        if let Some(token) = &token {
            all.push(("X-Auth-Token", token));
        }
        raw_http(self.authority(), method, path, &all, body)
    }

    /// `host:port` of the API.
    pub fn authority(&self) -> &str {
        self.url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            // The test failed: what the server logged is the first clue.
            eprintln!("navigator-server at {}:\n{}", self.url, self.logs());
        }
    }
}

/// The URL of a banner line `  API       http://127.0.0.1:PORT  (auth: ...`
/// (`https://` with `[ssl]`).
fn api_url(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix("API")?;
    let url = rest.split_whitespace().next()?;
    (url.starts_with("http://") || url.starts_with("https://")).then(|| url.to_owned())
}

/// Runs `navigator-server ARGS` to completion (bounded) and returns its
/// output; for start-up failures.
pub fn run_server_to_exit(args: &[&std::ffi::OsStr]) -> CliOutput {
    run_bounded(
        Command::new(binary("navigator-server")).args(args),
        "navigator-server",
    )
}

// ---------------------------------------------------------------- agent

/// A running `navigator-agent`, stopped by PID (SIGTERM, then SIGKILL after
/// [`STOP_TIMEOUT`]) when dropped.
pub struct AgentProcess {
    child: Option<Child>,
    /// The `host` it was configured with, for messages.
    pub host: String,
    stdout: Collected,
    stderr: Collected,
}

impl AgentProcess {
    /// Starts `navigator-agent --config-file CONFIG_FILE`; it is ready when
    /// the server lists its proxy as up.
    pub fn start(config_file: &Path, host: &str) -> AgentProcess {
        let mut child = Command::new(binary("navigator-agent"))
            .arg("--config-file")
            .arg(config_file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start navigator-agent");
        let stdout: Collected = Arc::default();
        let stderr: Collected = Arc::default();
        collect_lines(child.stdout.take().expect("piped"), stdout.clone(), None);
        collect_lines(child.stderr.take().expect("piped"), stderr.clone(), None);
        AgentProcess {
            child: Some(child),
            host: host.to_owned(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the agent printed so far, for failure messages.
    pub fn logs(&self) -> String {
        let take = |c: &Collected| c.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!(
            "--- agent {} stdout ---\n{}--- agent {} stderr ---\n{}---",
            self.host,
            take(&self.stdout),
            self.host,
            take(&self.stderr)
        )
    }

    /// SIGKILL: the agent gets no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] (SIGKILL after that).
    /// Returns the exit status if the agent exited by itself.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    eprintln!(
                        "navigator-agent (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                        child.id()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Runs `navigator-agent ARGS` to completion (bounded); for start-up failures.
pub fn run_agent_to_exit(args: &[&std::ffi::OsStr]) -> CliOutput {
    run_bounded(
        Command::new(binary("navigator-agent")).args(args),
        "navigator-agent",
    )
}

// ---------------------------------------------------------------- CLI

/// What one CLI run printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `navigator --os-endpoint URL ARGS` without credentials (noauth).
pub fn run_cli(url: &str, args: &[&str]) -> CliOutput {
    run_cli_as(url, &Auth::Noauth, args)
}

/// Runs `navigator --os-endpoint URL ARGS` logged in as `auth` says (`OS_*`
/// variables), with none of the caller's own `OS_*` or `NAVIGATOR_ENDPOINT`
/// settings leaking in.
pub fn run_cli_as(url: &str, auth: &Auth, args: &[&str]) -> CliOutput {
    run_cli_with_env(url, &auth.os_environment(), args)
}

/// Runs `navigator --os-endpoint URL ARGS` with exactly the `OS_*` variables
/// of `os_env` (none of the caller's own, nor `NAVIGATOR_ENDPOINT`).
pub fn run_cli_with_env(url: &str, os_env: &[(&str, String)], args: &[&str]) -> CliOutput {
    let mut command = Command::new(binary("navigator"));
    command
        .arg("--os-endpoint")
        .arg(url)
        .args(args)
        .env_remove("NAVIGATOR_ENDPOINT");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OS_") {
            command.env_remove(name);
        }
    }
    command.envs(os_env.iter().map(|(k, v)| (k, v)));
    run_bounded(&mut command, "navigator")
}

fn run_bounded(command: &mut Command, name: &str) -> CliOutput {
    run_bounded_for(command, name, CLI_TIMEOUT)
}

/// Runs `command` to completion with its output collected; kills it and
/// panics when it runs longer than `timeout`.
pub fn run_bounded_for(command: &mut Command, name: &str, timeout: Duration) -> CliOutput {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let stdout: Collected = Arc::default();
    let stderr: Collected = Arc::default();
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_thread = {
        let sink = stdout.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = out_pipe.read_to_string(&mut text);
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = text;
        })
    };
    let err_thread = {
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = text;
        })
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not finish within {timeout:?}");
            }
        }
    };
    let _ = out_thread.join();
    let _ = err_thread.join();
    let take = |c: &Collected| std::mem::take(&mut *c.lock().unwrap_or_else(|p| p.into_inner()));
    CliOutput {
        code: status.code(),
        stdout: take(&stdout),
        stderr: take(&stderr),
    }
}

/// Parses JSON printed by the CLI, with the text in the panic message.
pub fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// A string field of a `-f json` show output.
pub fn field(forward: &Value, name: &str) -> String {
    match &forward[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------- echo servers

/// A TCP echo server on `ip:0` answering each line with `TAG` + the line.
pub struct TcpEcho {
    pub addr: SocketAddr,
}

impl TcpEcho {
    pub fn start(ip: &str, tag: &'static str) -> TcpEcho {
        let ip: std::net::IpAddr = ip.parse().expect("an IP address");
        TcpEcho::start_at(SocketAddr::new(ip, 0), tag)
    }

    /// An echo server on a given port (targets of a port range must sit on
    /// consecutive ports).
    pub fn start_at(at: SocketAddr, tag: &'static str) -> TcpEcho {
        let listener = TcpListener::bind(at)
            .unwrap_or_else(|e| panic!("cannot bind a TCP echo server on {at}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    while let Ok(n) = reader.read_line(&mut line) {
                        if n == 0 || writer.write_all(format!("{tag}{line}").as_bytes()).is_err() {
                            break;
                        }
                        line.clear();
                    }
                });
            }
        });
        TcpEcho { addr }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

/// A UDP echo server on `ip:0` answering each datagram with `TAG` + it.
pub struct UdpEcho {
    pub addr: SocketAddr,
}

impl UdpEcho {
    pub fn start(ip: &str, tag: &'static str) -> UdpEcho {
        let ip: std::net::IpAddr = ip.parse().expect("an IP address");
        UdpEcho::start_at(SocketAddr::new(ip, 0), tag)
    }

    /// An echo server on a given port.
    pub fn start_at(at: SocketAddr, tag: &'static str) -> UdpEcho {
        let socket = UdpSocket::bind(at)
            .unwrap_or_else(|e| panic!("cannot bind a UDP echo server on {at}: {e}"));
        let addr = socket.local_addr().expect("local addr");
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let mut reply = tag.as_bytes().to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from);
            }
        });
        UdpEcho { addr }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

// ---------------------------------------------------------------- traffic

/// One TCP round trip through `ip:port`: sends `payload\n`, returns the
/// reply line (without the newline) or what went wrong.
pub fn tcp_round_trip(ip: &str, port: u16, payload: &str) -> Result<String, String> {
    let addr = SocketAddr::new(ip.parse().map_err(|e| format!("{ip}: {e}"))?, port);
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{payload}\n").as_bytes())
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read {addr}: {e}"))?;
    if line.is_empty() {
        return Err(format!("{addr} closed the connection without answering"));
    }
    Ok(line.trim_end_matches('\n').to_owned())
}

/// Whether a TCP connection to `ip:port` is refused (nothing listens).
pub fn tcp_refused(ip: &str, port: u16) -> Result<(), String> {
    let addr = SocketAddr::new(ip.parse().map_err(|e| format!("{ip}: {e}"))?, port);
    match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("connect {addr}: {e} (expected connection refused)")),
        Ok(_) => Err(format!(
            "connect {addr}: accepted (expected connection refused)"
        )),
    }
}

/// Whether a datagram to `ip:port` goes unanswered (a UDP forward is gone).
pub fn udp_silent(ip: &str, port: u16) -> Result<(), String> {
    match udp_round_trip(ip, port, "anyone?") {
        Ok(reply) => Err(format!("{ip}:{port} still answered {reply:?}")),
        Err(_) => Ok(()),
    }
}

/// One UDP round trip through `ip:port` from a fresh socket: the reply, or
/// what went wrong (including no answer within [`IO_TIMEOUT`]).
pub fn udp_round_trip(ip: &str, port: u16, payload: &str) -> Result<String, String> {
    let addr = SocketAddr::new(ip.parse().map_err(|e| format!("{ip}: {e}"))?, port);
    let local: SocketAddr = if addr.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .expect("address");
    let socket = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket.connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    socket
        .send(payload.as_bytes())
        .map_err(|e| format!("send {addr}: {e}"))?;
    let mut buf = [0u8; 2048];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| format!("recv {addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Round trips through a forward until one answers (bounded), then checks
/// the answer is `expected`.
pub fn assert_tcp_reply(ip: &str, port: u16, payload: &str, expected: &str) {
    let got = eventually(
        &format!("a TCP reply via {ip}:{port}"),
        Duration::from_secs(5),
        || tcp_round_trip(ip, port, payload),
    );
    assert_eq!(got, expected, "TCP reply via {ip}:{port}");
}

/// Like [`assert_tcp_reply`] for UDP.
pub fn assert_udp_reply(ip: &str, port: u16, payload: &str, expected: &str) {
    let got = eventually(
        &format!("a UDP reply via {ip}:{port}"),
        Duration::from_secs(8),
        || udp_round_trip(ip, port, payload),
    );
    assert_eq!(got, expected, "UDP reply via {ip}:{port}");
}

// ---------------------------------------------------------------- raw HTTP

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        parse_json(&self.body)
    }
}

/// Writes one HTTP/1.1 request (with `Connection: close`) to `authority`
/// and reads the whole response. A write error (the server may answer and
/// close before reading a large body) is ignored if a response arrives.
pub fn raw_http(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream =
        TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect {authority}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let written = stream.write_all(&request);
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        panic!(
            "no HTTP response from {authority} {method} {path}: write {written:?}, read {read:?}"
        );
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}
