//! Notifications to systemd for the packaged `Type=notify` unit
//! (`packaging/navigator-server.service`): `READY=1` once the API answers,
//! `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1` when
//! shutdown begins. Outside systemd (`NOTIFY_SOCKET` unset) every call does
//! nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

fn send(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Tells systemd that shutdown has begun.
pub fn stopping() {
    send(NotifyState::Stopping);
}

/// Tells systemd that a reload has begun; [`reloaded`] ends it.
pub fn reloading() {
    send(NotifyState::Reloading);
}

/// Tells systemd that a reload is over (systemd 252 reads `READY=1` as
/// its end).
pub fn reloaded() {
    send(NotifyState::Ready);
}

/// Sends `READY=1` once the API at `local` answers a request, so that units
/// ordered after `navigator-server.service` find it serving, not just bound.
/// Plain HTTP is probed with a real request (any status line counts); over
/// TLS an accepted TCP connection is the probe, as the server has no client
/// certificate to present to itself. Gives up only on `shutdown`.
pub async fn ready_when_answering(local: SocketAddr, tls: bool, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let probe_addr = SocketAddr::new(reachable(local.ip()), local.port());
    let mut delay = Duration::from_millis(50);
    loop {
        let answered = tokio::select! {
            () = shutdown.cancelled() => return,
            answered = tokio::time::timeout(Duration::from_secs(5), probe(probe_addr, tls)) => {
                matches!(answered, Ok(Ok(true)))
            }
        };
        if answered {
            send(NotifyState::Ready);
            tracing::debug!(%probe_addr, "the API answers; told systemd READY=1");
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// The address to reach a listener bound to `ip` at: the same family's
/// loopback for a wildcard bind.
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

async fn probe(addr: SocketAddr, tls: bool) -> std::io::Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    if tls {
        return Ok(true);
    }
    // An IP address as Host passes the DNS-rebinding check.
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    Ok(&head == b"HTTP/1.1" || &head == b"HTTP/1.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_probed_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0".parse().unwrap()),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            reachable("::".parse().unwrap()),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(reachable(ip), ip);
    }
}
