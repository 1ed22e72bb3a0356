//! The RabbitMQ transport over TLS against the TLS listener of a real broker
//! (`scripts/rabbitmq`, started by `scripts/test-all`, with its throwaway CA
//! and client certificate): calls and Nova notifications work over TLS, the
//! payload is not readable on the wire, and every way of getting TLS wrong
//! (another CA, no CA, a name the certificate does not cover, plain AMQP to
//! the TLS port, a client certificate of another CA) fails fast with a
//! message that says so, never a hang or a silent plain-text link.
//!
//! Wrong CAs and certificates are made with `openssl` in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use navigator_rpc::{
    AmqpTransport, Broker, NotificationListener, NotificationSource, RabbitOptions, Target,
    Transport, amqp,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Well below the transport's 10 s connect timeout: a TLS mistake must be
/// reported by the handshake, not by the timeout.
const FAST: Duration = Duration::from_secs(8);

/// What `scripts/rabbitmq` exports about its TLS listener.
struct Tls {
    url: String,
    plain_url: String,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Tls {
    fn options(&self) -> RabbitOptions {
        RabbitOptions {
            ssl_ca_file: Some(self.ca.clone()),
            ..RabbitOptions::default()
        }
    }

    /// `host:port` of the TLS listener.
    fn address(&self) -> String {
        address_of(&self.url)
    }
}

/// `host:port` between `@` and `/` of a one-host URL.
fn address_of(url: &str) -> String {
    let after = url.rsplit_once('@').expect("credentials in the URL").1;
    after.split('/').next().expect("a host").to_owned()
}

/// The URL with its `host:port` replaced.
fn with_address(url: &str, address: &str) -> String {
    url.replace(&address_of(url), address)
}

fn tls() -> Option<Tls> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let found = (|| {
        Some(Tls {
            url: var("NAVIGATOR_TEST_TLS_TRANSPORT_URL")?,
            plain_url: var("NAVIGATOR_TEST_TRANSPORT_URL")?,
            ca: var("NAVIGATOR_TEST_RABBITMQ_CA")?.into(),
            client_cert: var("NAVIGATOR_TEST_RABBITMQ_CLIENT_CERT")?.into(),
            client_key: var("NAVIGATOR_TEST_RABBITMQ_CLIENT_KEY")?.into(),
        })
    })();
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "RabbitMQ TLS tests need scripts/rabbitmq's TLS listener (run scripts/test-all)"
            );
        }
        eprintln!(
            "skipped: NAVIGATOR_TEST_TLS_TRANSPORT_URL and NAVIGATOR_TEST_RABBITMQ_* are not set; \
             the RabbitMQ TLS tests need scripts/rabbitmq (run scripts/test-all)"
        );
    }
    found
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn connect(url: &str, options: &RabbitOptions) -> Result<AmqpTransport, String> {
    let broker = Broker::new(url, options).map_err(|e| e.to_string())?;
    AmqpTransport::connect_to(broker, amqp::DEFAULT_EXCHANGE)
        .await
        .map_err(|e| e.to_string())
}

/// Connects and expects a failure well before the connect timeout; returns
/// its message.
async fn connect_fails(url: &str, options: &RabbitOptions) -> String {
    let started = Instant::now();
    let result = connect(url, options).await;
    let took = started.elapsed();
    let Err(message) = result else {
        panic!("connected to {url} with {options:?}")
    };
    eprintln!("failed after {took:?}: {message}");
    assert!(took < FAST, "failed only after {took:?}: {message}");
    assert!(!message.contains("navigator-test"), "password in {message}");
    message
}

/// Answers `echo` with its arguments.
fn serve_echo(mut incoming: mpsc::Receiver<navigator_rpc::Incoming>) {
    tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            if let Some(reply) = msg.reply {
                let _ = reply.send(Ok(msg.args));
            }
        }
    });
}

/// A call from one TLS transport to another, through the broker.
async fn echo_over(url: &str, options: &RabbitOptions, payload: serde_json::Value) {
    let topic = unique("nav-tls");
    let server = connect(url, options).await.expect("server connects");
    let client = connect(url, options).await.expect("client connects");
    serve_echo(server.listen(&Target::host(&topic, "a")).await.unwrap());
    let reply = client
        .call(
            &Target::host(&topic, "a"),
            "echo",
            payload.clone(),
            Duration::from_secs(10),
        )
        .await
        .expect("call over TLS");
    assert_eq!(reply, payload);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn rpc_call_over_tls_works() {
    let Some(tls) = tls() else { return };
    echo_over(&tls.url, &tls.options(), json!({"n": 1, "s": "ü"})).await;
    // The same with TLS from the file, not the URL, and TLS 1.2 only.
    let url = tls.url.replace("?ssl=1", "");
    let options = RabbitOptions {
        ssl: true,
        ssl_version: navigator_rpc::broker::TlsVersions::Tls12,
        ..tls.options()
    };
    echo_over(&url, &options, json!({"tls": "1.2"})).await;
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let Some(tls) = tls() else { return };
    let options = RabbitOptions {
        ssl_cert_file: Some(tls.client_cert.clone()),
        ssl_key_file: Some(tls.client_key.clone()),
        ..tls.options()
    };
    echo_over(&tls.url, &options, json!({"mutual": true})).await;

    // The broker checks a presented certificate (verify_peer): one of
    // another CA is refused, which shows it is really sent. (Its alert or,
    // when the reset wins the race, a reset: both name the option.)
    let other = OtherCa::new();
    let options = RabbitOptions {
        ssl_cert_file: Some(other.dir.path().join("client.pem")),
        ssl_key_file: Some(other.dir.path().join("client.key")),
        ..tls.options()
    };
    let message = connect_fails(&tls.url, &options).await;
    assert!(
        (message.contains("UnknownCA") || message.contains("reset"))
            && message.contains("ssl_cert_file"),
        "{message}"
    );
}

#[test]
fn a_certificate_and_key_that_do_not_match_are_refused_at_start_up() {
    let Some(tls) = tls() else { return };
    let other = OtherCa::new();
    let options = RabbitOptions {
        ssl_cert_file: Some(tls.client_cert.clone()),
        ssl_key_file: Some(other.dir.path().join("client.key")),
        ..tls.options()
    };
    let err = Broker::new(&tls.url, &options).expect_err("a mismatched key is refused");
    let message = err.to_string();
    assert!(
        message.contains("[oslo_messaging_rabbit] ssl_cert_file")
            && message.contains("[oslo_messaging_rabbit] ssl_key_file")
            && message.contains("not a usable certificate and key pair"),
        "{message}"
    );
    // Without ssl_key_file the key is looked for in the certificate file.
    let options = RabbitOptions {
        ssl_cert_file: Some(tls.client_cert.clone()),
        ..tls.options()
    };
    let message = Broker::new(&tls.url, &options).unwrap_err().to_string();
    assert!(
        message.contains("ssl_cert_file") && message.contains("no private key in it"),
        "{message}"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_ca_fails_clearly() {
    let Some(tls) = tls() else { return };
    let other = OtherCa::new();
    let wrong = RabbitOptions {
        ssl_ca_file: Some(other.dir.path().join("ca.pem")),
        ..RabbitOptions::default()
    };
    let message = connect_fails(&tls.url, &wrong).await;
    assert!(
        message.contains("UnknownIssuer") && message.contains("not signed by a CA of"),
        "{message}"
    );
    // The system's CAs do not know the throwaway one either.
    let message = connect_fails(&tls.url, &RabbitOptions::default()).await;
    assert!(message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn the_host_name_is_checked() {
    let Some(tls) = tls() else { return };
    // 127.0.0.2 reaches the broker through a forwarder, but the broker's
    // certificate names 127.0.0.1, ::1 and localhost only.
    let forwarder = Forwarder::start("127.0.0.2:0", &tls.address()).await;
    let url = with_address(&tls.url, &forwarder.address);
    let message = connect_fails(&url, &tls.options()).await;
    assert!(
        message.contains("certificate not valid for name \"127.0.0.2\"")
            && message.contains("does not name the host"),
        "{message}"
    );
    // localhost is in it.
    let port = tls.address().rsplit_once(':').unwrap().1.to_owned();
    echo_over(
        &with_address(&tls.url, &format!("localhost:{port}")),
        &tls.options(),
        json!({"by": "name"}),
    )
    .await;
}

#[tokio::test]
async fn plain_amqp_to_the_tls_port_fails_clearly() {
    let Some(tls) = tls() else { return };
    let url = tls.url.replace("?ssl=1", "");
    let message = connect_fails(&url, &RabbitOptions::default()).await;
    assert!(
        message.contains("did not answer AMQP") && message.contains("?ssl=1"),
        "{message}"
    );
    // And TLS to the plain port.
    let url = format!("{}?ssl=1", tls.plain_url);
    let message = connect_fails(&url, &tls.options()).await;
    assert!(message.contains("did not answer TLS"), "{message}");
}

#[tokio::test]
async fn nothing_readable_crosses_the_wire() {
    let Some(tls) = tls() else { return };
    let marker = unique("navigator-wire-marker");
    let payload = json!({"marker": marker});

    // Control: through the same forwarder, plain AMQP shows the marker and
    // the password, so the capture works.
    let plain = Forwarder::start("127.0.0.1:0", &address_of(&tls.plain_url)).await;
    echo_over(
        &with_address(&tls.plain_url, &plain.address),
        &RabbitOptions::default(),
        payload.clone(),
    )
    .await;
    let seen = plain.captured();
    assert!(
        contains(&seen, marker.as_bytes()),
        "the plain capture misses the marker"
    );
    assert!(contains(&seen, b"navigator-test"));

    let encrypted = Forwarder::start("127.0.0.1:0", &tls.address()).await;
    echo_over(
        &with_address(&tls.url, &encrypted.address),
        &tls.options(),
        payload,
    )
    .await;
    let seen = encrypted.captured();
    assert!(seen.len() > 1000, "only {} bytes captured", seen.len());
    for secret in [marker.as_bytes(), b"navigator-test", b"AMQP", b"_msg_id"] {
        assert!(
            !contains(&seen, secret),
            "{:?} is readable on the TLS link",
            String::from_utf8_lossy(secret)
        );
    }
}

#[tokio::test]
async fn nova_notifications_are_received_over_tls() {
    let Some(tls) = tls() else { return };
    let exchange = unique("nova-tls");
    let queue = unique("navigator-notifications-tls");
    // Nova's side: the exchange and a notification, over plain AMQP.
    let plain = lapin::Connection::connect(
        &amqp_uri(&tls.plain_url),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("plain connection");
    let channel = plain.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();

    let (seen_tx, mut seen) = mpsc::channel(4);
    let listener = NotificationListener::spawn(
        NotificationSource {
            transport_url: tls.url.clone(),
            rabbit: tls.options(),
            exchange: exchange.clone(),
            topics: vec!["notifications".into()],
            queue: queue.clone(),
        },
        move |notification| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send(notification.event_type).await;
            }
        },
    )
    .expect("listener starts");
    let mut consuming = listener.consuming();
    tokio::time::timeout(Duration::from_secs(30), consuming.wait_for(|c| *c))
        .await
        .expect("consuming over TLS within 30 s")
        .unwrap();
    let body = json!({"event_type": "instance.delete.end", "payload": {"instance_id": "x"}});
    channel
        .basic_publish(
            exchange.as_str().into(),
            "notifications.info".into(),
            Default::default(),
            body.to_string().as_bytes(),
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("notification within 10 s");
    assert_eq!(event.as_deref(), Some("instance.delete.end"));
    listener.stop();
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = plain.close(200, "OK".into()).await;
}

/// The lapin URI of a one-host oslo URL.
fn amqp_uri(url: &str) -> String {
    let rest = url.strip_prefix("rabbit://").expect("rabbit://");
    let (netloc, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    format!("amqp://{netloc}/{vhost}")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Another CA, with a client certificate it signed: what the broker and the
/// client must not trust.
struct OtherCa {
    dir: tempfile::TempDir,
}

impl OtherCa {
    fn new() -> OtherCa {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(dir.path(), &ca);
        let mut csr = vec!["req"];
        csr.extend_from_slice(&ec);
        csr.extend_from_slice(&[
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=intruder",
        ]);
        openssl(dir.path(), &csr);
        std::fs::write(
            dir.path().join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .expect("write extensions");
        openssl(
            dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                "client.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "client.pem",
                "-days",
                "2",
                "-extfile",
                "client.ext",
            ],
        );
        OtherCa { dir }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test-all installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP forwarder on loopback that keeps a copy of every byte the client
/// sends and receives.
struct Forwarder {
    address: String,
    captured: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(listen: &str, upstream: &str) -> Forwarder {
        let listener = TcpListener::bind(listen).await.expect("bind the forwarder");
        let address = listener.local_addr().unwrap().to_string();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let task = tokio::spawn({
            let captured = captured.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(copy(client_read, server_write, captured.clone()));
                    tokio::spawn(copy(server_read, client_write, captured.clone()));
                }
            }
        });
        Forwarder {
            address,
            captured,
            task,
        }
    }

    fn captured(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    captured: Arc<Mutex<Vec<u8>>>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                captured.lock().unwrap().extend_from_slice(&buffer[..n]);
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
