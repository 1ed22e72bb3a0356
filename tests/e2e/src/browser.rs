//! Runs the browser test scripts of `tests/browser/` (node + playwright-core +
//! Debian's Chromium) from Rust tests, and answers their checkpoints.
//!
//! A script prints `NAVIGATOR-CHECKPOINT {"name":..,"data":..}` on stdout when
//! it reached a state the Rust side must check (traffic through a forward, a
//! raw HTTP request the browser cannot forge) and waits for `ok [json]` or
//! `fail reason` on stdin; `tests/browser/lib.mjs` is the other half.
//!
//! Without node, Chromium or the harness's `node_modules` a test panics under
//! `CI` and prints a `skipped:` line otherwise ([`Browser::find`]).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one script may run in all (its own timer is 300 s by default).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(420);

/// The folder holding `lib.mjs`, `package.json` and the test scripts.
pub fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../browser")
}

/// What a browser test needs, found on this machine.
#[derive(Debug, Clone)]
pub struct Browser {
    node: PathBuf,
    chromium: PathBuf,
}

/// A checkpoint handler's answer: `Ok(reply data)` or `Err(reason)`.
pub type Verdict = Result<Value, String>;

impl Browser {
    /// Finds node, Chromium and playwright-core; when one is missing it
    /// panics under `CI` and otherwise prints `skipped: ...` for `test` and
    /// returns `None`.
    pub fn find(test: &str) -> Option<Browser> {
        match Browser::probe() {
            Ok(browser) => Some(browser),
            Err(missing) if std::env::var_os("CI").is_some() => {
                panic!(
                    "{test}: {missing} (CI must run browser tests: scripts/test-all installs them)"
                )
            }
            Err(missing) => {
                eprintln!("\n*** skipped: {test}: {missing}\n");
                None
            }
        }
    }

    fn probe() -> Result<Browser, String> {
        let node = std::env::var_os("NAVIGATOR_NODE")
            .map(PathBuf::from)
            .or_else(|| find_in_path("node"))
            .ok_or("node is not installed (the browser tests run on node >= 20)")?;
        let chromium = std::env::var_os("NAVIGATOR_CHROMIUM")
            .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        if !chromium.is_file() {
            return Err(format!(
                "no Chromium at {} (install Debian's `chromium` package or set NAVIGATOR_CHROMIUM)",
                chromium.display()
            ));
        }
        let module = harness_dir().join("node_modules/playwright-core/package.json");
        if !module.is_file() {
            return Err(format!(
                "playwright-core is not installed: run `npm ci` in {}",
                harness_dir().display()
            ));
        }
        Ok(Browser { node, chromium })
    }

    /// Runs `script` (a path relative to [`harness_dir`] or absolute) with
    /// `env` added to the environment, calling `checkpoint(name, data)` for
    /// each checkpoint. Returns the script's log (stderr) on success, and a
    /// message with that log on failure.
    pub fn run(
        &self,
        script: &str,
        env: &[(&str, String)],
        mut checkpoint: impl FnMut(&str, &Value) -> Verdict,
    ) -> Result<String, String> {
        let path = harness_dir().join(script);
        let mut command = Command::new(&self.node);
        command
            .arg(&path)
            .current_dir(harness_dir())
            .env("NAVIGATOR_CHROMIUM", &self.chromium)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {} {}: {e}", self.node.display(), path.display()))?;
        let mut guard = ChildGuard(child);
        let log: Arc<Mutex<String>> = Arc::default();
        {
            let log = log.clone();
            let stderr = guard.0.stderr.take().expect("piped");
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // Echoed so that `cargo test -- --nocapture` shows progress.
                    eprintln!("{line}");
                    let mut text = log.lock().unwrap_or_else(|p| p.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        let stdout = guard.0.stdout.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdin = guard.0.stdin.take().expect("piped");
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        let mut rejected: Option<String> = None;
        let logs = |log: &Arc<Mutex<String>>| log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let Some(json) = line.strip_prefix("NAVIGATOR-CHECKPOINT ") else {
                        eprintln!("[browser stdout] {line}");
                        continue;
                    };
                    let parsed: Value = serde_json::from_str(json)
                        .map_err(|e| format!("bad checkpoint line {line:?}: {e}"))?;
                    let name = parsed["name"].as_str().unwrap_or_default().to_owned();
                    let answer = match checkpoint(&name, &parsed["data"]) {
                        Ok(Value::Null) => "ok".to_owned(),
                        Ok(reply) => format!("ok {reply}"),
                        Err(reason) => {
                            let reason = reason.replace('\n', " ");
                            rejected = Some(format!("checkpoint {name}: {reason}"));
                            format!("fail {reason}")
                        }
                    };
                    // The script may have died meanwhile; its exit status tells.
                    let _ = writeln!(stdin, "{answer}");
                    let _ = stdin.flush();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{script} did not finish within {SCRIPT_TIMEOUT:?}\n{}",
                        logs(&log)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(stdin);
        let status = guard
            .0
            .wait()
            .map_err(|e| format!("cannot wait for {script}: {e}"))?;
        // Let the stderr thread drain the last lines.
        thread::sleep(Duration::from_millis(50));
        let text = logs(&log);
        match (status.success(), rejected) {
            (true, None) => Ok(text),
            (_, Some(reason)) => Err(format!("{script}: {reason}\n{text}")),
            (false, None) => Err(format!("{script} failed ({status})\n{text}")),
        }
    }
}

/// Kills the script (and so its Chromium) if the test panics mid-run.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
