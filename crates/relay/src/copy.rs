//! Bidirectional TCP payload copy with correct half-close, using either `splice(2)`
//! (socket → pipe → socket, zero-copy, Linux) or a userspace buffer.
//!
//! Memory discipline: an idle connection owns neither a buffer nor a pipe. A read goes
//! into a per-thread scratch buffer and is written through to the destination at once;
//! only when the destination cannot take all of it does the connection keep the buffer
//! (until it is written; the thread makes itself a new scratch buffer). A pipe is
//! borrowed from a relay-wide pool for one transfer and returned empty. An idle
//! connection's copier is 40 bytes and holds no buffer, no pipe and two fds; what an
//! idle connection costs in all (tokio's task and I/O registrations, malloc) is
//! measured by `bench/relay/idle.sh`.
//!
//! Write-through matters for short connections (one request, one reply): each message
//! costs one read and one write syscall, no allocation, and no extra wake-up to learn
//! that the destination is writable, which it nearly always is.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::SpliceMode;
use crate::limits::Caps;

/// Buffer for the buffered copy: the per-thread scratch buffer's size.
const BUF_SIZE: usize = 64 * 1024;

thread_local! {
    /// The runtime thread's read buffer, lent to one read at a time.
    static SCRATCH: std::cell::Cell<Option<Vec<u8>>> = const { std::cell::Cell::new(None) };
}

/// Borrows the thread's scratch buffer (empty, `BUF_SIZE` capacity), or makes one
/// if a connection kept the last one.
fn take_scratch() -> Vec<u8> {
    SCRATCH
        .take()
        .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

/// Returns a buffer whose contents are written out.
fn return_scratch(mut buf: Vec<u8>) {
    buf.clear();
    SCRATCH.set(Some(buf));
}
/// Maximum bytes moved per splice call (the pipe capacity bounds it further).
#[cfg(target_os = "linux")]
const SPLICE_CHUNK: usize = 1 << 20;
/// Requested pipe capacity.
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1 << 20;
/// Idle pipes kept for reuse. Each costs 2 fds and no RSS (pipe pages are kernel
/// memory and empty pipes hold none), but its size counts against the per-user pipe
/// quota (`pipe-user-pages-soft`, 64 MiB by default), hence a modest cap.
const POOL_CAP: usize = 32;

/// Pool of empty pipes. Returning pipes only when empty is what makes reuse safe.
/// Every pipe, pooled or lent, holds two of the relay's open files
/// ([`Caps::fds`]); when the budget has no room, [`PipePool::get`] fails and the
/// copy falls back to a buffer for that chunk.
pub(crate) struct PipePool {
    #[cfg(target_os = "linux")]
    free: Mutex<Vec<Pipe>>,
    #[cfg(not(target_os = "linux"))]
    free: Mutex<Vec<()>>,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    caps: Arc<Caps>,
}

#[cfg(target_os = "linux")]
pub(crate) struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    /// Gets the pipe's two open files back when it is closed.
    caps: Arc<Caps>,
}

#[cfg(target_os = "linux")]
impl Drop for Pipe {
    fn drop(&mut self) {
        self.caps.fds.give_back(2);
    }
}

impl PipePool {
    pub(crate) fn new(caps: Arc<Caps>) -> Self {
        PipePool {
            free: Mutex::new(Vec::new()),
            caps,
        }
    }
}

#[cfg(target_os = "linux")]
impl PipePool {
    fn get(&self) -> io::Result<Pipe> {
        if let Some(p) = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(p);
        }
        use rustix::pipe::{PipeFlags, pipe_with};
        if !self.caps.fds.try_take(2) {
            return Err(io::Error::other(
                "the relay's open-file budget has no room for a pipe",
            ));
        }
        let (read, write) = match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
            Ok(pipe) => pipe,
            Err(e) => {
                self.caps.fds.give_back(2);
                return Err(e.into());
            }
        };
        // Bigger pipes mean fewer splice calls per megabyte. Best effort: the kernel
        // caps it (pipe-max-size, per-user pipe quota) and the default 64 KiB still works.
        let _ = rustix::pipe::fcntl_setpipe_size(&read, PIPE_SIZE);
        Ok(Pipe {
            read,
            write,
            caps: Arc::clone(&self.caps),
        })
    }

    /// Only call with an empty pipe.
    fn put(&self, pipe: Pipe) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOL_CAP {
            free.push(pipe);
        }
    }
}

/// Both directions of one relayed connection, as a hand-written state machine.
///
/// Why not two `async fn` pumps joined together: each pending `readable()` /
/// `writable()` future embeds an intrusive waiter node, and the joined futures cost
/// well over a kilobyte per connection. Driving `poll_read_ready` /
/// `poll_write_ready` directly stores the waker in the socket's own registration,
/// and this struct is 48 bytes, which is what keeps idle connections small.
pub(crate) struct Copier {
    up: Half,
    down: Half,
    /// Payload bytes moved, both directions.
    total: u64,
}

/// One direction. Holds a buffer or a pipe only between a read and the write that
/// drains it.
struct Half {
    phase: Phase,
    use_splice: bool,
    /// `SpliceMode::Auto`: may switch to splice once bulk data shows up.
    auto: bool,
    /// Boxed: only a direction whose destination is full (or that is between
    /// a splice in and out) holds anything, and an idle connection carries
    /// both directions for as long as it lasts.
    held: Option<Box<Held>>,
}

/// What a direction read and has not written yet.
#[derive(Default)]
struct Held {
    /// Bytes that are read but not yet written (pipe) / write position (buffer).
    pending: usize,
    buf: Option<Vec<u8>>,
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Read,
    Write,
    Done,
}

impl Copier {
    pub(crate) fn new(mode: SpliceMode) -> Self {
        Copier {
            up: Half::new(mode),
            down: Half::new(mode),
            total: 0,
        }
    }

    /// Total payload bytes moved so far (both directions); lets the caller detect activity.
    pub(crate) fn progress(&self) -> u64 {
        self.total
    }

    /// A copier resuming a connection another process relayed
    /// ([`crate::handover`]): a direction whose end of stream was already
    /// propagated stays done; `total` continues the progress count.
    pub(crate) fn resumed(mode: SpliceMode, [up_done, down_done]: [bool; 2], total: u64) -> Self {
        let mut copier = Copier::new(mode);
        if up_done {
            copier.up.phase = Phase::Done;
        }
        if down_done {
            copier.down.phase = Phase::Done;
        }
        copier.total = total;
        copier
    }

    /// Which directions (client → target, target → client) have seen and
    /// propagated their end of stream.
    pub(crate) fn done(&self) -> [bool; 2] {
        [self.up.phase == Phase::Done, self.down.phase == Phase::Done]
    }

    /// Brings the connection to a clean point for a hand-over: reads nothing
    /// more, writes out what either direction already read (buffer or pipe).
    /// Ready once nothing read is left unwritten: what the peers sent since
    /// stays in the kernel's socket buffers, for the next process to read.
    pub(crate) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        upstream: &TcpStream,
        pipes: &PipePool,
    ) -> Poll<io::Result<()>> {
        let up = self.up.poll_flush(cx, upstream, pipes)?;
        let down = self.down.poll_flush(cx, client, pipes)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Relays until both directions have seen EOF (each EOF is propagated as a
    /// write shutdown, so half-closed connections keep flowing the other way) or
    /// until one direction fails.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        upstream: &TcpStream,
        pipes: &PipePool,
        [to_target, from_target]: [&AtomicU64; 2],
    ) -> Poll<io::Result<()>> {
        let total = &mut self.total;
        let down_done = self.down.phase == Phase::Done;
        let up = self
            .up
            .poll(cx, client, upstream, pipes, to_target, total, down_done)?;
        let up_done = self.up.phase == Phase::Done;
        let down = self
            .down
            .poll(cx, upstream, client, pipes, from_target, total, up_done)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl Half {
    fn new(mode: SpliceMode) -> Self {
        Half {
            phase: Phase::Read,
            use_splice: cfg!(target_os = "linux") && mode == SpliceMode::Always,
            auto: cfg!(target_os = "linux") && mode == SpliceMode::Auto,
            held: None,
        }
    }

    /// Writes out what this direction holds, reading nothing.
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
        pipes: &PipePool,
    ) -> Poll<io::Result<()>> {
        while self.phase == Phase::Write {
            ready!(dst.poll_write_ready(cx))?;
            if self.write_out(dst, pipes)? {
                self.phase = Phase::Read;
            }
        }
        Poll::Ready(Ok(()))
    }

    // One call per wake-up on the hot path: plain arguments, no context struct to build.
    #[allow(clippy::too_many_arguments)]
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        pipes: &PipePool,
        counter: &AtomicU64,
        total: &mut u64,
        peer_done: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.phase {
                Phase::Done => return Poll::Ready(Ok(())),
                Phase::Read => {
                    // Consumes tokio's coop budget, so a bulk stream yields regularly.
                    ready!(src.poll_read_ready(cx))?;
                    let n = if self.use_splice {
                        match self.splice_in(src, pipes)? {
                            Some(n) => n,
                            None => continue,
                        }
                    } else {
                        let mut buf = take_scratch();
                        // Reads into spare capacity: no zeroing of 64 KiB per wake-up.
                        match recv_draining(src, &mut buf) {
                            Ok(0) => {
                                return_scratch(buf);
                                0
                            }
                            Ok(n) => {
                                // Auto: a read that fills the whole buffer means bulk data is
                                // queued; from now on this direction is worth the pipe.
                                if n == BUF_SIZE && self.auto {
                                    self.use_splice = true;
                                }
                                *total += n as u64;
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                                // Write through. tokio answers WouldBlock without a syscall
                                // until it has seen the destination writable once.
                                let written = match dst.try_write(&buf) {
                                    Ok(0) => {
                                        return_scratch(buf);
                                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                                    }
                                    Ok(w) => w,
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                                    Err(e) => {
                                        return_scratch(buf);
                                        return Poll::Ready(Err(e));
                                    }
                                };
                                if written == n {
                                    return_scratch(buf);
                                } else {
                                    // The destination is full: this connection keeps the
                                    // buffer until the rest is written.
                                    self.held = Some(Box::new(Held {
                                        pending: written,
                                        buf: Some(buf),
                                        ..Held::default()
                                    }));
                                    self.phase = Phase::Write;
                                }
                                continue;
                            }
                            // Readiness is now cleared; the next poll_read_ready parks us.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return_scratch(buf);
                                continue;
                            }
                            Err(e) => {
                                return_scratch(buf);
                                return Poll::Ready(Err(e));
                            }
                        }
                    };
                    if n == 0 {
                        self.held = None;
                        self.phase = Phase::Done;
                        // Propagate the FIN. ENOTCONN means the peer is already gone, which
                        // the other direction will notice on its own. When the other
                        // direction is done too, the connection ends now and closing the
                        // socket sends the FIN: one syscall fewer per connection.
                        if peer_done {
                            continue;
                        }
                        if let Err(e) = SockRef::from(dst).shutdown(std::net::Shutdown::Write)
                            && e.kind() != io::ErrorKind::NotConnected
                        {
                            return Poll::Ready(Err(e));
                        }
                        continue;
                    }
                    *total += n as u64;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    self.phase = Phase::Write;
                }
                Phase::Write => {
                    ready!(dst.poll_write_ready(cx))?;
                    if self.write_out(dst, pipes)? {
                        self.phase = Phase::Read;
                    }
                }
            }
        }
    }

    /// socket → pipe. `Some(n)`: n bytes now in the pipe (0 = EOF); `None`: retry
    /// (would block, or engine switched).
    #[cfg(target_os = "linux")]
    fn splice_in(&mut self, src: &TcpStream, pipes: &PipePool) -> io::Result<Option<usize>> {
        use rustix::pipe::splice;
        // Out of fds for a pipe: buffered copy for this chunk, splice again later.
        let Ok(pipe) = pipes.get() else {
            return self.buffered_fallback(src);
        };
        match src.try_io(Interest::READABLE, || {
            splice(src, None, &pipe.write, None, SPLICE_CHUNK, splice_flags())
                .map_err(io::Error::from)
        }) {
            Ok(n) => {
                if n == 0 {
                    pipes.put(pipe);
                } else {
                    self.held = Some(Box::new(Held {
                        pending: n,
                        pipe: Some(pipe),
                        ..Held::default()
                    }));
                }
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipes.put(pipe);
                Ok(None)
            }
            // Socket types that cannot splice: buffered copy for the rest of the connection.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                pipes.put(pipe);
                self.use_splice = false;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn splice_in(&mut self, _: &TcpStream, _: &PipePool) -> io::Result<Option<usize>> {
        self.use_splice = false;
        Ok(None)
    }

    #[cfg(target_os = "linux")]
    fn buffered_fallback(&mut self, src: &TcpStream) -> io::Result<Option<usize>> {
        let mut buf = Vec::with_capacity(BUF_SIZE);
        match src.try_read_buf(&mut buf) {
            Ok(n) => {
                self.held = Some(Box::new(Held {
                    pending: 0,
                    buf: Some(buf),
                    ..Held::default()
                }));
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes what the last read produced. Returns true once all of it is out (the
    /// buffer is freed / the empty pipe goes back to the pool).
    fn write_out(&mut self, dst: &TcpStream, pipes: &PipePool) -> io::Result<bool> {
        let Some(held) = &mut self.held else {
            return Ok(true);
        };
        #[cfg(target_os = "linux")]
        if let Some(pipe) = &held.pipe {
            let left = held.pending;
            match dst.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pipe.read, None, dst, None, left, splice_flags())
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => {
                    held.pending -= w;
                    if held.pending == 0
                        && let Some(p) = held.pipe.take()
                    {
                        pipes.put(p);
                        self.held = None;
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                // A pipe still holding data is dropped with the connection, never pooled.
                Err(e) => return Err(e),
            }
        }
        let _ = pipes;
        let Some(buf) = &held.buf else {
            self.held = None;
            return Ok(true);
        };
        match dst.try_write(&buf[held.pending..]) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => {
                held.pending += w;
                if held.pending == buf.len() {
                    if let Some(buf) = held.buf.take() {
                        return_scratch(buf);
                    }
                    self.held = None;
                    return Ok(true);
                }
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Reads into `buf`'s spare capacity, and treats a read shorter than the space
/// offered as the end of what the socket had queued: tokio's read readiness is
/// cleared with it, as on `EAGAIN`. This saves the second `recv` that would only
/// answer `EAGAIN`, one syscall per message of a request/reply exchange. It is safe
/// because the readiness is cleared only if no new event arrived since before the
/// read (tokio compares its event tick) and because the kernel raises a fresh
/// edge-triggered event for data queued after the read (nginx relies on the same).
fn recv_draining(src: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let offered = buf.capacity() - buf.len();
    let mut short = 0;
    match src.try_io(Interest::READABLE, || {
        let (n, _) = rustix::net::recv(
            src,
            rustix::buffer::spare_capacity(buf),
            rustix::net::RecvFlags::empty(),
        )?;
        if n > 0 && n < offered {
            short = n;
            // Not an error: tells try_io to clear the readiness it saw.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        r => r,
    }
}

#[cfg(target_os = "linux")]
fn splice_flags() -> rustix::pipe::SpliceFlags {
    rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::NONBLOCK
}
