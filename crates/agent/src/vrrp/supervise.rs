//! keepalived, run and supervised by the agent for this node's address
//! groups.
//!
//! keepalived is started in its own session (`setsid`), with its output
//! appended to a file of `run_dir`, so that it outlives the agent: an agent
//! restart must not move a virtual address, and a pipe to the old agent
//! would break with it. A new agent adopts the running keepalived (its pid
//! file, and `/proc/PID/cmdline` naming our configuration file), rewrites
//! the configuration and sends SIGHUP only when the text changed. If
//! keepalived exits, it is started again with [`navigator_core::Backoff`].
//! On shutdown the agent leaves it running; the agent check of the rendered
//! configuration (a lock on the agent's pid file) makes the node give its
//! addresses up once the agent has been gone `agent_check_delay`.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use navigator_core::Backoff;
use tokio_util::sync::CancellationToken;

use super::config::{VrrpConfig, find_program};
use super::render::{RenderContext, render};

/// How often keepalived's log file is read for new lines, and an adopted
/// keepalived (not our child: it cannot be waited for) is checked.
const POLL: Duration = Duration::from_millis(250);
/// The log file is emptied once read past this size.
const MAX_LOG_BYTES: u64 = 4 << 20;
/// A keepalived that ran this long before exiting starts again at once.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long the agent waits for its pid file's lock (a keepalived check
/// may hold it for a moment).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Why keepalived could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VrrpError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: another navigator-agent holds this lock; one agent per run_dir ([vrrp] run_dir)")]
    Locked(PathBuf),
    #[error("{0} not found in PATH (Debian's util-linux provides it)")]
    Missing(&'static str),
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> VrrpError + 'a {
    move |source| VrrpError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// The running supervision: keepalived's status for the reports, and the
/// agent's locked pid file, held as long as this lives.
pub struct Keepalived {
    status: Arc<Mutex<String>>,
    _agent_lock: File,
}

impl Keepalived {
    /// `running`, `starting` or what is wrong, for [`navigator_rpc::GroupState`].
    pub fn status(&self) -> Arc<Mutex<String>> {
        self.status.clone()
    }

    /// Writes and locks the agent's pid file, renders the configuration,
    /// adopts a running keepalived (SIGHUP if the text changed) or starts
    /// one, and supervises it until `shutdown` (which leaves it running).
    /// `program` is keepalived as [`VrrpConfig::check_host`] found it.
    pub fn start(
        config: &VrrpConfig,
        program: PathBuf,
        host: &str,
        shutdown: CancellationToken,
    ) -> Result<Keepalived, VrrpError> {
        std::fs::create_dir_all(&config.run_dir)
            .map_err(io(&config.run_dir, "cannot create the directory"))?;
        let agent_lock = lock_pid_file(&config.agent_pid_path())?;
        let flock = find_program(Path::new("flock")).ok_or(VrrpError::Missing("flock"))?;
        let setsid = find_program(Path::new("setsid")).ok_or(VrrpError::Missing("setsid"))?;
        let user = script_user();
        let text = render(
            config,
            &RenderContext {
                host,
                script_user: &user,
                flock: &flock,
            },
        );
        let conf = config.conf_path();
        let changed = std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str());
        if changed {
            write_atomically(&conf, &text)?;
        }
        let adopted = running_pid(config);
        match adopted {
            Some(pid) if changed => {
                tracing::info!(
                    target: "keepalived",
                    pid,
                    "adopted the running keepalived; its configuration changed: reloading it (SIGHUP)"
                );
                signal(pid, rustix::process::Signal::HUP);
            }
            Some(pid) => tracing::info!(
                target: "keepalived",
                pid,
                "adopted the running keepalived; configuration unchanged"
            ),
            None => {}
        }
        let status = Arc::new(Mutex::new(if adopted.is_some() {
            "running".to_owned()
        } else {
            "starting".to_owned()
        }));
        let supervisor = Supervisor {
            config: config.clone(),
            program,
            setsid,
            status: status.clone(),
        };
        tokio::spawn(follow_log(config.log_path(), shutdown.clone()));
        tokio::spawn(supervisor.run(adopted, shutdown));
        Ok(Keepalived {
            status,
            _agent_lock: agent_lock,
        })
    }
}

struct Supervisor {
    config: VrrpConfig,
    program: PathBuf,
    setsid: PathBuf,
    status: Arc<Mutex<String>>,
}

impl Supervisor {
    fn set_status(&self, status: String) {
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    async fn run(self, mut adopted: Option<i32>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let started = Instant::now();
            let exit = match adopted.take() {
                Some(pid) => {
                    self.set_status("running".into());
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        exit = wait_adopted(pid, &self.config) => exit,
                    }
                }
                None => match self.spawn() {
                    Ok(mut child) => {
                        tracing::info!(
                            target: "keepalived",
                            pid = child.id(),
                            config = %self.config.conf_path().display(),
                            "keepalived started"
                        );
                        self.set_status("running".into());
                        tokio::select! {
                            // Not killed: it outlives the agent (see the module's doc).
                            _ = shutdown.cancelled() => return,
                            exit = child.wait() => match exit {
                                Ok(status) => format!("exited: {status}"),
                                Err(e) => format!("exited: cannot wait for it: {e}"),
                            },
                        }
                    }
                    Err(e) => format!("cannot start {}: {e}", self.program.display()),
                },
            };
            if started.elapsed() >= HEALTHY_RUN {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                target: "keepalived",
                retry_in = ?delay,
                "keepalived {exit}; starting it again (the node holds no virtual address meanwhile)"
            );
            self.set_status(exit);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        // keepalived refuses to start over pid files of a live process;
        // these name none of ours (running_pid said so).
        for stale in [self.config.pid_path(), self.config.vrrp_pid_path()] {
            let _ = std::fs::remove_file(stale);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.log_path())?;
        // setsid(1) execs keepalived in a session of its own (a spawned
        // child is no group leader, so it does not fork): the same pid, and
        // no signal for the agent's session or process group reaches it.
        tokio::process::Command::new(&self.setsid)
            .arg(&self.program)
            .args(["-n", "-l", "-D", "--vrrp", "-f"])
            .arg(self.config.conf_path())
            .arg("-p")
            .arg(self.config.pid_path())
            .arg("-r")
            .arg(self.config.vrrp_pid_path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false)
            .spawn()
    }
}

/// The pid of a running keepalived of ours: its pid file's process, whose
/// command line names our configuration file.
pub fn running_pid(config: &VrrpConfig) -> Option<i32> {
    let text = std::fs::read_to_string(config.pid_path()).ok()?;
    let pid: i32 = text.trim().parse().ok().filter(|pid| *pid > 1)?;
    is_ours(pid, config).then_some(pid)
}

fn is_ours(pid: i32, config: &VrrpConfig) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let conf = config.conf_path();
    let conf = conf.as_os_str().as_encoded_bytes();
    let mut args = cmdline.split(|b| *b == 0);
    let is_keepalived = args
        .next()
        .is_some_and(|argv0| argv0.ends_with(b"keepalived"));
    is_keepalived && args.any(|arg| arg == conf)
}

/// Waits until the adopted keepalived `pid` is gone (polled: it is not our
/// child).
async fn wait_adopted(pid: i32, config: &VrrpConfig) -> String {
    loop {
        tokio::time::sleep(POLL).await;
        if !is_ours(pid, config) {
            return format!("(pid {pid}, adopted) exited");
        }
    }
}

fn signal(pid: i32, signal: rustix::process::Signal) {
    if let Some(raw) = rustix::process::Pid::from_raw(pid)
        && let Err(e) = rustix::process::kill_process(raw, signal)
    {
        tracing::warn!(target: "keepalived", pid, "cannot signal keepalived: {e}");
    }
}

/// Stops the keepalived of `config`'s run_dir, if one of ours runs: for
/// tests and benchmarks that simulate a node's death, and for an operator
/// who removed every group.
pub fn stop(config: &VrrpConfig) {
    if let Some(pid) = running_pid(config) {
        signal(pid, rustix::process::Signal::TERM);
    }
}

/// Opens, locks (exclusively) and fills the agent's pid file. The lock is
/// what keepalived's agent check tries; it goes with the process, so a
/// crashed agent or a reused pid cannot fake a live one.
fn lock_pid_file(path: &Path) -> Result<File, VrrpError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path, "cannot open the agent's pid file"))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(VrrpError::Locked(path.to_owned())),
            Err(e) => return Err(io(path, "cannot lock the agent's pid file")(e.into())),
        }
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io(path, "cannot write the agent's pid file"))?;
    Ok(file)
}

/// Writes `text` to `path` through a temporary file and a rename, so that
/// keepalived never reads half a configuration.
fn write_atomically(path: &Path, text: &str) -> Result<(), VrrpError> {
    let tmp = path.with_extension("conf.tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp, "cannot write"))?;
    std::fs::rename(&tmp, path).map_err(io(path, "cannot replace"))
}

/// The user keepalived runs the agent check as: the agent's own, so the
/// check can take the lock; root's name when root.
fn script_user() -> String {
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        return "root".into();
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id = fields.nth(1)?;
                (id.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| "navigator".into())
}

/// Logs keepalived's output lines (it writes them to its console, which is
/// our file) under the `keepalived` target, from the end of what is there
/// now; empties the file when it grows past [`MAX_LOG_BYTES`].
async fn follow_log(path: PathBuf, shutdown: CancellationToken) {
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut partial = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let Ok(mut file) = File::open(&path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
        }
        if len == offset || file.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut chunk = Vec::new();
        // Bounded per poll, so that a flood cannot hold the task.
        let Ok(read) = (&mut file).take(1 << 20).read_to_end(&mut chunk) else {
            continue;
        };
        offset += read as u64;
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if !line.is_empty() {
                tracing::info!(target: "keepalived", "{line}");
            }
        }
        if partial.len() > 64 << 10 {
            partial.clear();
        }
        if offset >= MAX_LOG_BYTES
            && offset == len
            && OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .is_ok()
        {
            offset = 0;
        }
    }
}
