//! The calibration relay of `bench/relay/forwarders.sh`: what a minimal TCP
//! relay costs, to measure Navigator's relay against.
//!
//! `minrelay <listen> <target> [--reuseport]`: one thread, one epoll set
//! (edge-triggered). Per accepted connection (`TCP_NODELAY` on both sides) a
//! nonblocking connect to the
//! target, then both directions moved with `splice(2)` through a pipe per
//! direction, created per connection (what a minimal relay does; no pool).
//! A direction that reads EOF shuts down the write side of the other socket
//! once its pipe is empty (half-close carried through); the pair is closed
//! when both directions have ended, or at once on any error. Six files per
//! connection (two sockets, two pipes). With
//! `--reuseport` several processes share the listening port (the kernel
//! spreads connections among them). Prints `READY`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType, sockopt};
use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};

/// One direction: source socket -> pipe -> destination socket.
struct Dir {
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    in_pipe: usize,
    eof: bool,
    shut: bool,
}

struct Conn {
    /// 0: the client, 1: the target.
    socks: [OwnedFd; 2],
    connected: bool,
    /// 0: client -> target, 1: target -> client.
    dirs: [Dir; 2],
    generation: u32,
}

const LISTENER: u64 = u64::MAX;
const CHUNK: usize = 1 << 16;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minrelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn socket(addr: &SocketAddr) -> rustix::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
}

fn new_dir() -> rustix::io::Result<Dir> {
    let (pipe_r, pipe_w) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    Ok(Dir {
        pipe_r,
        pipe_w,
        in_pipe: 0,
        eof: false,
        shut: false,
    })
}

/// Token of one socket of connection `idx`: generation, index, side, so that
/// an event queued for a closed connection never reaches its slot's next one.
fn token(generation: u32, idx: usize, side: usize) -> u64 {
    (u64::from(generation) << 32) | ((idx as u64) << 1) | side as u64
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: minrelay <listen> <target> [--reuseport]";
    let listen: SocketAddr = args.first().ok_or(usage)?.parse()?;
    let target: SocketAddr = args.get(1).ok_or(usage)?.parse()?;
    let reuseport = args.iter().any(|a| a == "--reuseport");

    let lst = socket(&listen)?;
    sockopt::set_socket_reuseaddr(&lst, true)?;
    if reuseport {
        sockopt::set_socket_reuseport(&lst, true)?;
    }
    rustix::net::bind(&lst, &listen)?;
    rustix::net::listen(&lst, 4096)?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        &lst,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut generation = 0u32;
    let mut events = Vec::with_capacity(1024);
    println!("READY");
    std::io::stdout().flush()?;
    loop {
        events.clear();
        epoll::wait(&ep, spare_capacity(&mut events), None)?;
        for ev in events.iter().copied() {
            let t = ev.data.u64();
            if t == LISTENER {
                loop {
                    let client = match rustix::net::accept_with(
                        &lst,
                        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    ) {
                        Ok(fd) => fd,
                        Err(Errno::AGAIN) => break,
                        Err(Errno::INTR | Errno::CONNABORTED) => continue,
                        Err(e) => {
                            // Out of descriptors: the backlog waits, and the
                            // level-triggered listener is retried after a
                            // pause instead of in a tight loop.
                            eprintln!("minrelay: accept: {e}");
                            std::thread::sleep(std::time::Duration::from_millis(10));
                            break;
                        }
                    };
                    generation = generation.wrapping_add(1);
                    // Any failure here drops what was made: the client is closed.
                    let Ok(conn) = open(client, &target, generation) else {
                        continue;
                    };
                    let idx = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    let flags = epoll::EventFlags::IN
                        | epoll::EventFlags::OUT
                        | epoll::EventFlags::RDHUP
                        | epoll::EventFlags::ET;
                    let ok = (0..2).all(|side| {
                        epoll::add(
                            &ep,
                            &conn.socks[side],
                            epoll::EventData::new_u64(token(generation, idx, side)),
                            flags,
                        )
                        .is_ok()
                    });
                    if ok {
                        conns[idx] = Some(conn);
                    } else {
                        free.push(idx);
                    }
                }
                continue;
            }
            let idx = ((t & 0xffff_ffff) >> 1) as usize;
            let side = (t & 1) as usize;
            let Some(Some(c)) = conns.get_mut(idx) else {
                continue;
            };
            if c.generation != (t >> 32) as u32 {
                continue;
            }
            if !c.connected {
                if side == 0 {
                    continue; // client data waits in its socket until the target answers
                }
                match sockopt::socket_error(&c.socks[1]) {
                    Ok(Ok(())) if { ev.flags }.contains(epoll::EventFlags::OUT) => {
                        c.connected = true
                    }
                    Ok(Ok(())) => continue,
                    _ => {
                        conns[idx] = None;
                        free.push(idx);
                        continue;
                    }
                }
            }
            // Both directions every time: an edge on either socket may be
            // room or data for either of them.
            let done = pump(c, 0).and_then(|a| Ok(pump(c, 1)? & a));
            if !matches!(done, Ok(false)) {
                // Both directions ended, or an error: close everything.
                conns[idx] = None;
                free.push(idx);
            }
        }
    }
}

/// Accepted client plus a connect under way to the target and two pipes.
fn open(client: OwnedFd, target: &SocketAddr, generation: u32) -> rustix::io::Result<Conn> {
    let upstream = socket(target)?;
    // As every TCP relay does: small request and reply segments go out at
    // once instead of waiting on Nagle for an ACK.
    sockopt::set_tcp_nodelay(&client, true)?;
    sockopt::set_tcp_nodelay(&upstream, true)?;
    match rustix::net::connect(&upstream, target) {
        Ok(()) | Err(Errno::INPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(Conn {
        socks: [client, upstream],
        connected: false,
        dirs: [new_dir()?, new_dir()?],
        generation,
    })
}

/// Moves what can be moved in direction `d`; Ok(true) once it has ended
/// (EOF read, pipe empty, write side shut down).
fn pump(c: &mut Conn, d: usize) -> rustix::io::Result<bool> {
    let (src, dst) = (&c.socks[d], &c.socks[1 - d]);
    let dir = &mut c.dirs[d];
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        let mut progress = false;
        if !dir.eof {
            // EAGAIN here is an empty socket or a full pipe; either way the
            // next edge (data in, or room out) brings us back.
            match splice(src, None, &dir.pipe_w, None, CHUNK, flags) {
                Ok(0) => {
                    dir.eof = true;
                    progress = true;
                }
                Ok(n) => {
                    dir.in_pipe += n;
                    progress = true;
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        if dir.in_pipe > 0 {
            match splice(&dir.pipe_r, None, dst, None, dir.in_pipe, flags) {
                Ok(n) => {
                    dir.in_pipe -= n;
                    progress |= n > 0;
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        if !progress {
            break;
        }
    }
    if dir.eof && dir.in_pipe == 0 && !dir.shut {
        rustix::net::shutdown(dst, Shutdown::Write)?;
        dir.shut = true;
    }
    Ok(dir.shut)
}
