//! Load generator and servers for `bench/relay/forwarders.sh`, written so
//! that they are not what a forwarder benchmark measures: one thread, one
//! epoll set, nonblocking sockets, no async runtime and no allocation per
//! connection in the hot loop.
//!
//! - `rate <addr> <concurrency> <seconds> [--bind-from <ip>]`: keeps
//!   `concurrency` short connections in flight: nonblocking connect, a 64-byte
//!   request, the 64-byte reply, a plain close (the client closes first, so
//!   TIME_WAIT is on the client side: the benchmark topology sets
//!   `net.ipv4.tcp_tw_reuse=1` and a 64k port range, which allows about 60,000
//!   new connections per second to one destination; `--bind-from` binds a
//!   source address, with `SO_REUSEADDR` so ports in TIME_WAIT can be taken
//!   again). Latency (connect start to reply read) goes into a fixed
//!   log-linear histogram. A connection in flight for more than 5 s is an
//!   error and is closed; errors are counted, never fatal. Prints
//!   `RATE cps=.. p50_us=.. p99_us=.. ok=.. errors=.. refused=.. reset=..
//!   timeout=.. gen_cpu_pct=..`, the last being this process's CPU time over
//!   wall time in percent of one core: near 100 the generator, not the
//!   forwarder, set the rate.
//! - `echo <addr>`: echo server (accepts until EAGAIN, echoes what it reads,
//!   closes on EOF); prints `READY`.
//! - `hold <addr> <count> [--timeout-ms T] [--conc N]`: opens up to `count`
//!   connections, `N` (64) at a time, each with one 1-byte round trip, and
//!   keeps the ones that answered open until stdin closes. A connection that
//!   fails is classified: `refused` (connect refused), `reset` (reset after
//!   the connect), `closed` (EOF before the reply), `timeout` (no reply in T
//!   ms, default 3000) or `other`. After the first failure at most 32 more
//!   are tried, so a forwarder that stops answering does not cost `count`
//!   timeouts. Prints `HELD ok=.. failed=.. refused=.. reset=.. closed=..
//!   timeout=.. other=.. first_fail=<kind|none> first_fail_ms=.. gen_cpu_pct=..`
//!   (`first_fail_ms`: how long the first failed connection took to fail).

use std::io::{BufRead as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{Timespec, epoll};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const REQ: usize = 64;
/// A connection in flight this long is an error.
const RATE_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("rate") => rate(&args[1..]),
        Some("echo") => echo(&args[1..]),
        Some("hold") => hold(&args[1..]),
        _ => Err("usage: loadgen rate|echo|hold ...".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Res<T>
where
    T::Err: std::fmt::Display,
{
    let s = args.get(i).ok_or_else(|| format!("missing {what}"))?;
    s.parse()
        .map_err(|e| format!("bad {what} {s:?}: {e}").into())
}

/// The value after `--name`, if given.
fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Res<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => arg(args, i + 1, name).map(Some),
    }
}

/// CPU time of this process (user + system), from the kernel's precise clock.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn family(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    }
}

/// A nonblocking TCP socket with a connect under way (or done).
fn start_connect(addr: &SocketAddr, from: Option<IpAddr>) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        family(addr),
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_tcp_nodelay(&fd, true)?;
    if let Some(ip) = from {
        sockopt::set_socket_reuseaddr(&fd, true)?;
        rustix::net::bind(&fd, &SocketAddr::new(ip, 0))?;
    }
    match rustix::net::connect(&fd, addr) {
        Ok(()) | Err(Errno::INPROGRESS) => Ok(fd),
        Err(e) => Err(e),
    }
}

/// Log-linear latency histogram in microseconds: exact below 128, then 64
/// buckets per power of two (under 1.6 % error). Fixed size, so recording
/// never allocates.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    const SUB: u32 = 6;
    fn new() -> Self {
        Histogram {
            counts: vec![0; 128 + 64 * 64],
            total: 0,
        }
    }
    fn index(v: u64) -> usize {
        if v < 128 {
            return v as usize;
        }
        let b = 63 - v.leading_zeros(); // >= 7
        let sub = (v >> (b - Self::SUB)) & 63;
        128 + (b as usize - 7) * 64 + sub as usize
    }
    /// The lowest value of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let b = (i - 128) / 64 + 7;
        let sub = ((i - 128) % 64) as u64;
        (64 + sub) << (b - Self::SUB as usize)
    }
    fn record(&mut self, us: u64) {
        let i = Self::index(us).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
    }
    fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let want = ((self.total as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::value(i);
            }
        }
        0
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting to start (after a failed start, until `since`).
    Idle,
    Connecting,
    Reading,
}

struct Slot {
    fd: Option<OwnedFd>,
    phase: Phase,
    since: Instant,
    got: usize,
}

#[derive(Default)]
struct Errors {
    refused: u64,
    reset: u64,
    timeout: u64,
    other: u64,
}

impl Errors {
    fn count(&mut self, e: Errno) {
        match e {
            Errno::CONNREFUSED => self.refused += 1,
            Errno::CONNRESET | Errno::PIPE => self.reset += 1,
            Errno::TIMEDOUT => self.timeout += 1,
            _ => self.other += 1,
        }
    }
    fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.other
    }
}

fn rate(args: &[String]) -> Res<()> {
    let addr: SocketAddr = arg(args, 0, "addr")?;
    let conc: usize = arg(args, 1, "concurrency")?;
    let secs: f64 = arg(args, 2, "seconds")?;
    let from: Option<IpAddr> = flag(args, "--bind-from")?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let now = Instant::now();
    let mut slots: Vec<Slot> = (0..conc)
        .map(|_| Slot {
            fd: None,
            phase: Phase::Idle,
            since: now,
            got: 0,
        })
        .collect();
    let mut hist = Histogram::new();
    let mut errors = Errors::default();
    let mut events = Vec::with_capacity(1024);
    let req = [7u8; REQ];
    let mut buf = [0u8; 512];
    let cpu0 = cpu_time();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    let mut last_sweep = start;

    // Starts slot `i`'s next connection; a failed start waits 10 ms.
    let launch = |slot: &mut Slot, i: usize, errors: &mut Errors, ep: &OwnedFd| {
        slot.since = Instant::now();
        slot.got = 0;
        match start_connect(&addr, from) {
            Ok(fd) => {
                let flags = epoll::EventFlags::IN
                    | epoll::EventFlags::OUT
                    | epoll::EventFlags::RDHUP
                    | epoll::EventFlags::ET;
                match epoll::add(ep, &fd, epoll::EventData::new_u64(i as u64), flags) {
                    Ok(()) => {
                        slot.fd = Some(fd);
                        slot.phase = Phase::Connecting;
                    }
                    Err(e) => {
                        errors.count(e);
                        slot.phase = Phase::Idle;
                    }
                }
            }
            Err(e) => {
                errors.count(e);
                slot.fd = None;
                slot.phase = Phase::Idle;
                slot.since += Duration::from_millis(10);
            }
        }
    };
    for (i, slot) in slots.iter_mut().enumerate() {
        launch(slot, i, &mut errors, &ep);
    }
    while Instant::now() < end {
        events.clear();
        epoll::wait(&ep, spare_capacity(&mut events), Some(&tick))?;
        for ev in events.iter().copied() {
            let i = ev.data.u64() as usize;
            let flags = ev.flags;
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
            let Some(fd) = slot.fd.as_ref() else { continue };
            // What happened to this connection: Ok(true) = finished.
            let outcome: Result<bool, Errno> = (|| {
                if slot.phase == Phase::Connecting {
                    if !flags.intersects(
                        epoll::EventFlags::OUT | epoll::EventFlags::ERR | epoll::EventFlags::HUP,
                    ) {
                        return Ok(false);
                    }
                    sockopt::socket_error(fd)??;
                    // 64 bytes always fit a fresh socket's send buffer.
                    if rustix::io::write(fd, &req)? != REQ {
                        return Err(Errno::IO);
                    }
                    slot.phase = Phase::Reading;
                }
                loop {
                    match rustix::io::read(fd, &mut buf) {
                        Ok(0) => return Err(Errno::CONNRESET),
                        Ok(n) => {
                            slot.got += n;
                            if slot.got >= REQ {
                                return Ok(true);
                            }
                        }
                        Err(Errno::AGAIN) => return Ok(false),
                        Err(e) => return Err(e),
                    }
                }
            })();
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    hist.record(slot.since.elapsed().as_micros() as u64);
                    slot.fd = None;
                    launch(slot, i, &mut errors, &ep);
                }
                Err(e) => {
                    errors.count(e);
                    slot.fd = None;
                    launch(slot, i, &mut errors, &ep);
                }
            }
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= Duration::from_millis(50) {
            last_sweep = now;
            for (i, slot) in slots.iter_mut().enumerate() {
                match slot.phase {
                    Phase::Idle if now >= slot.since => launch(slot, i, &mut errors, &ep),
                    Phase::Connecting | Phase::Reading
                        if now.duration_since(slot.since) > RATE_TIMEOUT =>
                    {
                        errors.timeout += 1;
                        slot.fd = None;
                        launch(slot, i, &mut errors, &ep);
                    }
                    _ => {}
                }
            }
        }
    }
    let wall = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    println!(
        "RATE cps={:.0} p50_us={} p99_us={} ok={} errors={} refused={} reset={} timeout={} gen_cpu_pct={:.0}",
        hist.total as f64 / wall.as_secs_f64(),
        hist.percentile(0.50),
        hist.percentile(0.99),
        hist.total,
        errors.total(),
        errors.refused,
        errors.reset,
        errors.timeout,
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    Ok(())
}

/// A listening socket, nonblocking, with `SO_REUSEADDR` (and `SO_REUSEPORT`
/// when asked).
pub fn listener(addr: &SocketAddr, reuseport: bool) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        family(addr),
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    rustix::net::bind(&fd, addr)?;
    rustix::net::listen(&fd, 4096)?;
    Ok(fd)
}

/// An echo connection: its socket and what could not be written yet.
struct EchoConn {
    fd: OwnedFd,
    pending: Vec<u8>,
}

fn echo(args: &[String]) -> Res<()> {
    let addr: SocketAddr = arg(args, 0, "addr")?;
    let lst = listener(&addr, false)?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    const LISTENER: u64 = u64::MAX;
    epoll::add(
        &ep,
        &lst,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )?;
    // Indexed by file descriptor number: the kernel hands out the lowest
    // free one, so the table stays as small as the number of connections.
    let mut conns: Vec<Option<EchoConn>> = Vec::new();
    let mut events = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut accept_errors = 0u64;
    println!("READY");
    std::io::stdout().flush()?;
    loop {
        events.clear();
        epoll::wait(&ep, spare_capacity(&mut events), None)?;
        for ev in events.iter().copied() {
            let token = ev.data.u64();
            if token == LISTENER {
                loop {
                    match rustix::net::accept_with(
                        &lst,
                        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    ) {
                        Ok(fd) => {
                            let i = fd.as_raw_fd() as usize;
                            let _ = sockopt::set_tcp_nodelay(&fd, true);
                            if epoll::add(
                                &ep,
                                &fd,
                                epoll::EventData::new_u64(i as u64),
                                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
                            )
                            .is_err()
                            {
                                continue;
                            }
                            if conns.len() <= i {
                                conns.resize_with(i + 1, || None);
                            }
                            conns[i] = Some(EchoConn {
                                fd,
                                pending: Vec::new(),
                            });
                        }
                        Err(Errno::AGAIN) => break,
                        Err(Errno::INTR | Errno::CONNABORTED) => {}
                        Err(e) => {
                            // Out of descriptors: report once in a while and
                            // let the backlog wait (level-triggered, so the
                            // listener fires again).
                            if accept_errors.is_power_of_two() {
                                eprintln!("echo: accept: {e} ({} times)", accept_errors + 1);
                            }
                            accept_errors += 1;
                            std::thread::sleep(Duration::from_millis(1));
                            break;
                        }
                    }
                }
                continue;
            }
            let i = token as usize;
            let Some(Some(c)) = conns.get_mut(i) else {
                continue;
            };
            let keep = echo_ready(c, &ep, &mut buf, ev.flags);
            if !keep {
                conns[i] = None;
            }
        }
    }
}

/// Serves one readiness event; false when the connection is to be closed.
fn echo_ready(c: &mut EchoConn, ep: &OwnedFd, buf: &mut [u8], flags: epoll::EventFlags) -> bool {
    if !c.pending.is_empty() {
        if !flags.contains(epoll::EventFlags::OUT) {
            return !flags.contains(epoll::EventFlags::ERR);
        }
        match rustix::io::write(&c.fd, &c.pending) {
            Ok(n) => {
                c.pending.drain(..n);
            }
            Err(Errno::AGAIN) => return true,
            Err(_) => return false,
        }
        if !c.pending.is_empty() {
            return true;
        }
        // Drained: back to reading only.
        let _ = epoll::modify(
            ep,
            &c.fd,
            epoll::EventData::new_u64(c.fd.as_raw_fd() as u64),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        );
    }
    loop {
        let n = match rustix::io::read(&c.fd, &mut *buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(Errno::AGAIN) => return true,
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        };
        let mut off = 0;
        while off < n {
            match rustix::io::write(&c.fd, &buf[off..n]) {
                Ok(w) => off += w,
                Err(Errno::AGAIN) => {
                    // The peer does not read: keep the rest and wait for room.
                    c.pending.extend_from_slice(&buf[off..n]);
                    let _ = epoll::modify(
                        ep,
                        &c.fd,
                        epoll::EventData::new_u64(c.fd.as_raw_fd() as u64),
                        epoll::EventFlags::OUT | epoll::EventFlags::RDHUP,
                    );
                    return true;
                }
                Err(_) => return false,
            }
        }
    }
}

/// How a held connection failed.
#[derive(Clone, Copy, Debug)]
enum Fail {
    Refused,
    Reset,
    Closed,
    Timeout,
    Other,
}

impl Fail {
    fn from_errno(e: Errno) -> Fail {
        match e {
            Errno::CONNREFUSED => Fail::Refused,
            Errno::CONNRESET | Errno::PIPE => Fail::Reset,
            Errno::TIMEDOUT => Fail::Timeout,
            _ => Fail::Other,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Fail::Refused => "refused",
            Fail::Reset => "reset",
            Fail::Closed => "closed",
            Fail::Timeout => "timeout",
            Fail::Other => "other",
        }
    }
}

struct Pending {
    fd: OwnedFd,
    since: Instant,
    sent: bool,
}

fn hold(args: &[String]) -> Res<()> {
    let addr: SocketAddr = arg(args, 0, "addr")?;
    let count: usize = arg(args, 1, "count")?;
    let timeout = Duration::from_millis(flag(args, "--timeout-ms")?.unwrap_or(3000));
    let conc: usize = flag(args, "--conc")?.unwrap_or(64);
    const MORE_AFTER_FAILURE: usize = 32;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let cpu0 = cpu_time();
    let start = Instant::now();
    let mut held: Vec<OwnedFd> = Vec::with_capacity(count);
    let mut fails = [0usize; 5];
    let mut first: Option<(Fail, Duration)> = None;
    let mut tried = 0usize;
    let mut budget = count;
    // In flight, keyed by fd number (unique while open).
    let mut flight: std::collections::HashMap<u64, Pending> = Default::default();
    let mut events = Vec::with_capacity(256);
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let mut fail = |kind: Fail, since: Instant, first: &mut Option<(Fail, Duration)>| {
        fails[kind as usize] += 1;
        if first.is_none() {
            *first = Some((kind, since.elapsed()));
        }
    };
    loop {
        while flight.len() < conc && tried < budget {
            tried += 1;
            let since = Instant::now();
            match start_connect(&addr, None) {
                Ok(fd) => {
                    let key = fd.as_raw_fd() as u64;
                    let flags = epoll::EventFlags::IN
                        | epoll::EventFlags::OUT
                        | epoll::EventFlags::RDHUP
                        | epoll::EventFlags::ET;
                    epoll::add(&ep, &fd, epoll::EventData::new_u64(key), flags)?;
                    flight.insert(
                        key,
                        Pending {
                            fd,
                            since,
                            sent: false,
                        },
                    );
                }
                Err(e) => fail(Fail::from_errno(e), since, &mut first),
            }
            if first.is_some() {
                budget = budget.min(tried + MORE_AFTER_FAILURE);
            }
        }
        if flight.is_empty() && tried >= budget {
            break;
        }
        events.clear();
        epoll::wait(&ep, spare_capacity(&mut events), Some(&tick))?;
        for ev in events.iter().copied() {
            let key = ev.data.u64();
            let Some(p) = flight.get_mut(&key) else {
                continue;
            };
            let r: Result<bool, Fail> = (|| {
                if !p.sent {
                    if !{ ev.flags }.intersects(
                        epoll::EventFlags::OUT | epoll::EventFlags::ERR | epoll::EventFlags::HUP,
                    ) {
                        return Ok(false);
                    }
                    sockopt::socket_error(&p.fd)
                        .map_err(Fail::from_errno)?
                        .map_err(Fail::from_errno)?;
                    rustix::io::write(&p.fd, b"p").map_err(Fail::from_errno)?;
                    p.sent = true;
                }
                let mut b = [0u8; 1];
                match rustix::io::read(&p.fd, &mut b) {
                    Ok(0) => Err(Fail::Closed),
                    Ok(_) => Ok(true),
                    Err(Errno::AGAIN) => Ok(false),
                    Err(e) => Err(Fail::from_errno(e)),
                }
            })();
            match r {
                Ok(false) => {}
                Ok(true) => {
                    if let Some(p) = flight.remove(&key) {
                        let _ = epoll::delete(&ep, &p.fd);
                        held.push(p.fd);
                    }
                }
                Err(kind) => {
                    if let Some(p) = flight.remove(&key) {
                        fail(kind, p.since, &mut first);
                    }
                }
            }
        }
        let now = Instant::now();
        let late: Vec<u64> = flight
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) > timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            if let Some(p) = flight.remove(&k) {
                fail(Fail::Timeout, p.since, &mut first);
            }
        }
        if first.is_some() {
            budget = budget.min(tried + MORE_AFTER_FAILURE);
        }
    }
    let wall = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let failed: usize = fails.iter().sum();
    println!(
        "HELD ok={} failed={failed} refused={} reset={} closed={} timeout={} other={} first_fail={} first_fail_ms={} secs={:.1} gen_cpu_pct={:.0}",
        held.len(),
        fails[Fail::Refused as usize],
        fails[Fail::Reset as usize],
        fails[Fail::Closed as usize],
        fails[Fail::Timeout as usize],
        fails[Fail::Other as usize],
        first.map_or("none", |(k, _)| k.name()),
        first.map_or(0, |(_, d)| d.as_millis()),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    std::io::stdout().flush()?;
    // Keep them idle until the driver closes our stdin.
    let stdin = std::io::stdin();
    let mut line = String::new();
    while matches!(stdin.lock().read_line(&mut line), Ok(n) if n > 0) {
        line.clear();
    }
    drop(held);
    Ok(())
}
