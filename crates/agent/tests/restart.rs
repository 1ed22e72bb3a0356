//! The real `navigator-agent` (relay backend) restarted, then upgraded,
//! under load, as `systemctl restart` does it: SIGTERM, the old process
//! exits, a new one starts. A small supervisor stands in for systemd's file
//! descriptor store: its `NOTIFY_SOCKET` keeps what `FDSTORE=1` sends and
//! drops what `FDSTOREREMOVE=1` names, and it starts the next process with
//! the descriptors from 3 and `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`.
//! The test plays the server over RabbitMQ (`NAVIGATOR_TEST_TRANSPORT_URL`,
//! from scripts/rabbitmq): it sends the agent its forward with a full sync,
//! and the same full sync again after each restart.
//!
//! 200 streaming connections (each writes a continuous byte pattern and
//! checks its echo) and a loop of new connections go through both restarts:
//! zero errors, every byte exact. The restart gap (SIGTERM to the new
//! process's `READY=1`) is printed, not asserted; `bench/agent/restart.sh`
//! measures it over 20 restarts (`NAVIGATOR_RESTARTS`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use navigator_core::{ForwardId, ForwardSpec, Protocol};
use navigator_rpc::{AgentClient, ForwardEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Streaming connections held through the restarts.
const STREAMS: usize = 200;
/// How long a read may wait (a restart included).
const PATIENCE: Duration = Duration::from_secs(20);

fn broker_url() -> Option<String> {
    match std::env::var("NAVIGATOR_TEST_TRANSPORT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("the restart test needs scripts/rabbitmq (run scripts/test-all)")
        }
        _ => {
            eprintln!(
                "skipped: NAVIGATOR_TEST_TRANSPORT_URL is not set; the restart test needs scripts/rabbitmq"
            );
            None
        }
    }
}

/// systemd's side of the file descriptor store, for one service.
struct Supervisor {
    path: PathBuf,
    store: Arc<Mutex<Vec<(String, OwnedFd)>>>,
    /// `READY=1` messages, when they came.
    ready: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    fn new(dir: &Path) -> Supervisor {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let store = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (store, ready, stop) = (store.clone(), ready.clone(), stop.clone());
            move || serve_notify(&socket, &store, &ready, &stop)
        });
        Supervisor {
            path,
            store,
            ready,
            stop,
            thread: Some(thread),
        }
    }

    fn stored(&self) -> usize {
        self.store.lock().expect("store").len()
    }

    fn readies(&self) -> Vec<Instant> {
        self.ready.lock().expect("ready").clone()
    }

    /// Starts `binary` as the service's next process, with every stored
    /// descriptor from 3, as systemd does (it keeps its own copies).
    fn start(&self, binary: &Path, config: &Path, log: &Path) -> Child {
        let store = self.store.lock().expect("store");
        // Copies above any descriptor of this process, inheritable; bash
        // moves them to 3.. (dash reads single-digit descriptors only).
        let mut high = Vec::with_capacity(store.len());
        for (_, fd) in store.iter() {
            let copy = rustix::io::fcntl_dupfd_cloexec(fd, 2000).expect("dup");
            rustix::io::fcntl_setfd(&copy, rustix::io::FdFlags::empty()).expect("inheritable");
            high.push(copy);
        }
        let mut script = String::new();
        if !store.is_empty() {
            script.push_str("exec");
            for (i, fd) in high.iter().enumerate() {
                script.push_str(&format!(" {}<&{}", 3 + i, fd.as_raw_fd()));
            }
            for fd in &high {
                script.push_str(&format!(" {}<&-", fd.as_raw_fd()));
            }
            let names: Vec<&str> = store.iter().map(|(n, _)| n.as_str()).collect();
            script.push_str(&format!(
                "\nexport LISTEN_FDS={} LISTEN_FDNAMES={} LISTEN_PID=$$\n",
                store.len(),
                names.join(":")
            ));
        }
        script.push_str("exec \"$0\" --config-file \"$1\"\n");
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .arg(binary)
            .arg(config)
            .env("NOTIFY_SOCKET", &self.path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the agent");
        drop(high);
        child
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_notify(
    socket: &UnixDatagram,
    store: &Mutex<Vec<(String, OwnedFd)>>,
    ready: &Mutex<Vec<Instant>>,
    stop: &AtomicBool,
) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut buf = vec![0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    while !stop.load(Ordering::Relaxed) {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = recvmsg(
            socket.as_fd(),
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let n = match received {
            Ok(r) => r.bytes,
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => continue,
            Err(e) => panic!("notify socket: {e}"),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let fields: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let name = fields.get("FDNAME").copied().unwrap_or("stored").to_owned();
        if fields.get("FDSTORE") == Some(&"1") {
            let mut store = store.lock().expect("store");
            store.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
        }
        if fields.get("FDSTOREREMOVE") == Some(&"1") {
            store.lock().expect("store").retain(|(n, _)| *n != name);
        }
        if fields.get("READY") == Some(&"1") {
            ready.lock().expect("ready").push(Instant::now());
        }
    }
}

/// Kills (by PID) the agents still running when the test ends.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A free port of this test's range (31000-31999), from an offset of the
/// process id (plus `offset`, one per test of this file) so that concurrent
/// runs and tests rarely meet.
fn free_port(offset: u32) -> u16 {
    let start = 31000 + ((std::process::id() + offset) % 900) as u16;
    (start..32000)
        .chain(31000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 31000-31999")
}

fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Writes the pattern and checks its echo until `stop`.
async fn stream(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 1024];
    let mut back = vec![0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        for (k, b) in chunk.iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        s.write_all(&chunk)
            .await
            .map_err(|e| format!("write at byte {sent}: {e}"))?;
        tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
            .await
            .map_err(|_| format!("no echo at byte {sent}"))?
            .map_err(|e| format!("read at byte {sent}: {e}"))?;
        if back != chunk {
            return Err(format!("wrong bytes at byte {sent}"));
        }
        sent += chunk.len() as u64;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sent)
}

/// New connections, one round trip each, until `stop`.
async fn new_connections(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> Result<(), String> {
    while !stop.load(Ordering::Relaxed) {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("a new connection was refused: {e}"))?;
        s.write_all(b"hello")
            .await
            .map_err(|e| format!("new connection, write: {e}"))?;
        let mut back = [0u8; 5];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
            .await
            .map_err(|_| "new connection: no echo".to_owned())?
            .map_err(|e| format!("new connection, read: {e}"))?;
        made.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Sends the full sync until the agent answers it (it may still be
/// connecting to RabbitMQ).
async fn sync(client: &AgentClient, host: &str, entry: &ForwardEntry, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .sync_forwards(host, vec![entry.clone()], generation)
            .await
        {
            Ok(result) => {
                assert!(
                    result.results.iter().all(|r| r.reason.is_none()),
                    "{result:?}"
                );
                return;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "the agent does not answer: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_upgrade_drop_and_refuse_no_connection() {
    let Some(url) = broker_url() else { return };
    // 200 streams are 200 client and 200 echo sockets here, and the store
    // holds ~400 more.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .expect("raise RLIMIT_NOFILE");
    let restarts: usize = std::env::var("NAVIGATOR_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);

    let dir = tempfile::tempdir().expect("tempdir");
    let host = format!("restart-{}", std::process::id());
    let config = dir.path().join("navigator.conf");
    std::fs::write(
        &config,
        format!(
            "[DEFAULT]\nhost = {host}\ntransport_url = {url}\n[agent]\nbackend = relay\n\
             external_addresses = 127.0.0.1\nport_range = 31000-31999\nreport_interval = 2\n"
        ),
    )
    .expect("config");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_navigator-agent"));
    // The upgrade: another file, as a package upgrade replaces the binary.
    let upgraded = dir.path().join("navigator-agent-upgraded");
    std::fs::copy(&binary, &upgraded).expect("copy the binary");

    let target = echo_server().await;
    let port = free_port(0);
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let spec = ForwardSpec {
        id: ForwardId::new_random(),
        protocol: Protocol::Tcp,
        listen,
        target,
        ports: 1,
        one_target_port: false,
        controls: Default::default(),
    };
    let entry = ForwardEntry::from(&spec);

    let supervisor = Supervisor::new(dir.path());
    let mut agents = Agents(Vec::new());
    agents
        .0
        .push(supervisor.start(&binary, &config, &dir.path().join("agent-0.log")));
    let amqp = Arc::new(
        navigator_rpc::AmqpTransport::connect(&url, navigator_rpc::amqp::DEFAULT_EXCHANGE)
            .await
            .expect("connect to RabbitMQ"),
    );
    let client = AgentClient::new(amqp.clone(), Duration::from_secs(5));
    sync(&client, &host, &entry, 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| tokio::spawn(stream(listen, stop.clone())))
        .collect();
    let made = Arc::new(AtomicU64::new(0));
    let fresh = tokio::spawn(new_connections(listen, stop.clone(), made.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut gaps = Vec::new();
    for n in 1..=restarts {
        let old = agents.0.last_mut().expect("an agent");
        let stopping = Instant::now();
        sigterm(old);
        let status = tokio::task::block_in_place(|| wait_exit(old, Duration::from_secs(20)));
        assert!(status.success(), "the agent exited with {status}");
        let stopped = stopping.elapsed();
        assert!(
            supervisor.stored() >= 2 * STREAMS + 2,
            "restart {n}: {} descriptors stored",
            supervisor.stored()
        );
        let readies = supervisor.readies().len();
        // Every other restart is an upgrade to the copied binary.
        let next = if n % 2 == 0 { &upgraded } else { &binary };
        let log = dir.path().join(format!("agent-{n}.log"));
        agents.0.push(supervisor.start(next, &config, &log));
        let deadline = Instant::now() + Duration::from_secs(20);
        while supervisor.readies().len() == readies {
            assert!(Instant::now() < deadline, "restart {n}: no READY=1");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let gap = stopping.elapsed();
        gaps.push(gap);
        println!("restart {n}: old process gone after {stopped:?}, new one ready after {gap:?}");
        // The new process removed everything from the store.
        let deadline = Instant::now() + Duration::from_secs(10);
        while supervisor.stored() > 0 {
            assert!(
                Instant::now() < deadline,
                "restart {n}: the store is not emptied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The server's full sync after the agent's start: the same forward,
        // which changes nothing.
        sync(&client, &host, &entry, 1 + n as u64).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut lost = 0;
    let mut errors = Vec::new();
    for s in streams {
        match s.await.expect("join") {
            Ok(_) => {}
            Err(e) => {
                lost += 1;
                errors.push(e);
            }
        }
    }
    let refused = match fresh.await.expect("join") {
        Ok(()) => 0,
        Err(e) => {
            errors.push(e);
            1
        }
    };
    println!(
        "RESULT restarts={restarts} streams={STREAMS} lost={lost} refused={refused} new_connections={} max_gap_ms={}",
        made.load(Ordering::Relaxed),
        gaps.iter().max().map_or(0, |g| g.as_millis())
    );
    if !errors.is_empty() {
        for n in 0..=restarts {
            let log = dir.path().join(format!("agent-{n}.log"));
            eprintln!(
                "--- agent-{n}.log\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(made.load(Ordering::Relaxed) > 0);
    amqp.close().await;
}

/// A state this agent cannot read (a future version) is refused cleanly:
/// the agent logs it, closes every descriptor it was given, removes them
/// from the store, and starts fresh (READY=1, with nothing carried). No
/// broker is needed: the agent is ready before it reaches RabbitMQ.
#[test]
fn a_future_state_is_refused_and_the_agent_starts_fresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("navigator.conf");
    std::fs::write(
        &config,
        "[DEFAULT]\nhost = refuse-test\ntransport_url = rabbit://u:p@127.0.0.1:1/\n\
         [agent]\nbackend = relay\nexternal_addresses = 127.0.0.1\nport_range = 31000-31999\n",
    )
    .expect("config");
    let supervisor = Supervisor::new(dir.path());
    let port = free_port(450);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let state = rustix::fs::memfd_create("state", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let mut file = std::fs::File::from(state);
    std::io::Write::write_all(
        &mut file,
        br#"{"version":99,"forwards":[],"relay":{"version":99}}"#,
    )
    .expect("write");
    {
        let mut store = supervisor.store.lock().expect("store");
        store.push(("navigator-relay-l0".to_owned(), OwnedFd::from(listener)));
        store.push(("navigator-state".to_owned(), OwnedFd::from(file)));
    }
    let log = dir.path().join("agent.log");
    let mut agents = Agents(vec![supervisor.start(
        Path::new(env!("CARGO_BIN_EXE_navigator-agent")),
        &config,
        &log,
    )]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while supervisor.readies().is_empty() || supervisor.stored() > 0 {
        assert!(
            Instant::now() < deadline,
            "no READY=1 or the store is not emptied ({} stored)\n{}",
            supervisor.stored(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("refusing the previous process's hand-over")
            && text.contains("of version 99"),
        "{text}"
    );
    // Every copy of the listening socket is closed: the port is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the refused socket is still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = &mut agents.0[0];
    sigterm(agent);
    assert!(wait_exit(agent, Duration::from_secs(20)).success());
}
