//! The one way the data plane runs host tools (`nft`, `iptables-restore`,
//! `conntrack`, `sysctl`, `ip`): argv is logged, stdin can be fed, every run
//! has a timeout, and a failure carries the tool's stderr so that the reason
//! shown on a forward is the kernel's own words.
//!
//! A [`Host`] may carry a command prefix (`ip netns exec NS`): the tests and
//! the benchmark use it to program a network namespace from outside, and the
//! production agent uses an empty prefix.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// Default limit for one tool run; large `nft -f` batches get more.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a host command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{program} is not installed (not found in PATH){hint}")]
    NotFound { program: String, hint: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

impl ExecError {
    /// The tool's stderr when it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ExecError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// The output of a successful run.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Where commands run: this host, or a network namespace through a prefix.
#[derive(Clone, Debug, Default)]
pub struct Host {
    prefix: Vec<String>,
    /// The named network namespace the prefix enters, if any: sysctls there
    /// are read from a thread that joins it instead of a subprocess.
    netns: Option<String>,
}

impl Host {
    /// Commands run directly on this host.
    pub fn local() -> Host {
        Host::default()
    }

    /// Commands run inside network namespace `netns` (`ip netns exec`).
    pub fn netns(netns: &str) -> Host {
        Host {
            prefix: ["ip", "netns", "exec", netns]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            netns: Some(netns.to_owned()),
        }
    }

    /// The prefix, for callers that spawn long-running processes themselves.
    pub fn prefix(&self) -> &[String] {
        &self.prefix
    }

    /// A `Command` for `argv` with the host's prefix applied.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut full: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        full.extend_from_slice(argv);
        let mut cmd = Command::new(full[0]);
        cmd.args(&full[1..]);
        cmd
    }

    /// Runs `argv` with `stdin` fed to it, within `timeout`.
    pub async fn run(
        &self,
        argv: &[&str],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<Output, ExecError> {
        let program = argv.first().copied().unwrap_or_default().to_owned();
        let started = Instant::now();
        tracing::debug!(argv = ?argv, prefix = ?self.prefix, stdin_bytes = stdin.map_or(0, str::len), "running");
        let configure = |cmd: &mut Command| {
            cmd.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        };
        // In a named namespace, the tool is spawned from a thread that joined
        // it (a child inherits its parent thread's namespaces): no `ip netns
        // exec` wrapper, whose fork, exec and /sys remount cost more than
        // an `nft` run itself. The prefix remains the fallback.
        let joined = self.netns.as_deref().and_then(|netns| {
            let mut direct = Command::new(program.as_str());
            direct.args(argv.get(1..).unwrap_or_default());
            configure(&mut direct);
            spawn_in_netns(netns, direct)
        });
        let spawned = match joined {
            Some(result) => result,
            None => {
                let mut cmd = self.command(argv);
                configure(&mut cmd);
                cmd.spawn()
            }
        };
        let mut child = spawned.map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ExecError::NotFound {
                    hint: install_hint(&program),
                    program: program.clone(),
                }
            } else {
                ExecError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits early closes its stdin; its exit status and
            // stderr then say why, so a write error here is not the story.
            let _ = pipe.write_all(input.as_bytes()).await;
            drop(pipe);
        }
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => return Err(ExecError::Spawn { program, source }),
            Err(_) => return Err(ExecError::Timeout { program, timeout }),
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        tracing::debug!(argv = ?argv, status = %output.status, elapsed = ?started.elapsed(), "finished");
        if output.status.success() {
            Ok(Output { stdout, stderr })
        } else {
            // With a prefix, `ip netns exec` reports a missing program itself.
            if !self.prefix.is_empty() && stderr.contains("No such file or directory") {
                return Err(ExecError::NotFound {
                    hint: install_hint(&program),
                    program,
                });
            }
            Err(ExecError::Failed {
                program,
                status: output.status.to_string(),
                stderr: if stderr.is_empty() {
                    "(no message)".to_owned()
                } else {
                    stderr
                },
            })
        }
    }

    /// Reads a sysctl (`net.ipv4.ip_forward`); `None` when it does not exist.
    pub async fn sysctl(&self, key: &str) -> Option<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        if self.prefix.is_empty() {
            return std::fs::read_to_string(path)
                .ok()
                .map(|v| v.trim().to_owned());
        }
        if let Some(netns) = &self.netns
            && let Some(value) = read_in_netns(netns, &path)
        {
            return value;
        }
        self.run(&["cat", &path], None, DEFAULT_TIMEOUT)
            .await
            .ok()
            .map(|o| o.stdout.trim().to_owned())
    }

    /// Writes a sysctl.
    pub async fn set_sysctl(&self, key: &str, value: &str) -> Result<(), ExecError> {
        self.run(
            &["sysctl", "-q", "-w", &format!("{key}={value}")],
            None,
            DEFAULT_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// Whether `program` can be run here.
    pub async fn has(&self, program: &str) -> bool {
        match self
            .run(&[program, "--version"], None, DEFAULT_TIMEOUT)
            .await
        {
            Ok(_) => true,
            Err(ExecError::NotFound { .. } | ExecError::Spawn { .. }) => false,
            // It ran; some tools return non-zero for --version (conntrack -V).
            Err(_) => true,
        }
    }
}

/// Spawns `cmd` from a short-lived thread that joined network namespace
/// `netns`; `None` when the namespace cannot be joined (the caller falls
/// back to `ip netns exec`). The child is registered with the current tokio
/// runtime, so it is awaited like any other.
fn spawn_in_netns(netns: &str, mut cmd: Command) -> Option<std::io::Result<tokio::process::Child>> {
    use std::os::fd::AsFd as _;
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let ns_path = format!("/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = std::fs::File::open(ns_path).ok()?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .ok()?;
                let _runtime = runtime.enter();
                Some(cmd.spawn())
            })
            .join()
            .ok()
            .flatten()
    })
}

/// Reads `path` (under `/proc/sys/net`, which shows the network namespace of
/// the *reading thread*) from a short-lived thread that joins namespace
/// `netns`. `None` when the namespace cannot be joined (the caller falls back
/// to a subprocess); `Some(None)` when the file does not exist.
///
/// Preflight reads sysctls on every apply that adds a forward; through
/// `ip netns exec cat` that is a fork + exec each (milliseconds), here it is
/// tens of microseconds, so the benchmark and the tests see the cost the
/// production agent (plain procfs reads) has. The thread is a fresh
/// `std::thread` that exits right after, never a pooled one: a pooled thread
/// left in another namespace would run unrelated work there.
fn read_in_netns(netns: &str, path: &str) -> Option<Option<String>> {
    use std::os::fd::AsFd as _;
    let ns_path = format!("/run/netns/{netns}");
    let path = path.to_owned();
    let reader = std::thread::spawn(move || {
        let ns = std::fs::File::open(ns_path).ok()?;
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .ok()?;
        Some(
            std::fs::read_to_string(path)
                .ok()
                .map(|v| v.trim().to_owned()),
        )
    });
    // Blocks this worker for the life of a thread that opens and reads two
    // files: far less than handing the work to another thread would cost.
    reader.join().ok().flatten()
}

/// The Debian package that provides `program`, as an install command.
pub fn install_hint(program: &str) -> String {
    let package = match program {
        "nft" => "nftables",
        p if p.starts_with("iptables") || p.starts_with("ip6tables") => "iptables",
        "conntrack" => "conntrack",
        "socat" => "socat",
        "ip" => "iproute2",
        "sysctl" => "procps",
        _ => return String::new(),
    };
    format!(": install it with `apt-get install -y {package}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_stderr_and_feeds_stdin() {
        let host = Host::local();
        let out = host
            .run(&["cat"], Some("hello"), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(out.stdout, "hello");
        let err = host
            .run(
                &["sh", "-c", "echo boom >&2; exit 3"],
                None,
                DEFAULT_TIMEOUT,
            )
            .await
            .unwrap_err();
        assert_eq!(err.stderr(), Some("boom"));
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        let err = host
            .run(&["nft-does-not-exist"], None, DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::NotFound { .. }), "{err}");
        let err = host
            .run(&["sleep", "5"], None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    }
}
