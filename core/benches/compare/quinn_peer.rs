//! The quinn side of the comparison: the same jobs as the punchline peer, done over QUIC with
//! quinn on loopback.
//!
//! Each public function builds its own two-worker tokio runtime, a server endpoint on
//! `127.0.0.1:0` with a fresh self-signed certificate and a client endpoint that trusts it,
//! connects (and waits until both sides have the connection) before any timer starts, runs the
//! server side in a spawned task, and closes both endpoints before returning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{ClientConfig, Connection, Endpoint, ServerConfig, TransportConfig, VarInt};
use tokio::sync::oneshot;

use crate::proxy::{Impair, Proxy};

/// How long to wait for the peers to drain after closing, so every function returns promptly
/// even if the close frames are lost to an impairing relay.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Transport settings shared by both endpoints. The windows are raised far above the
/// bandwidth-delay product of loopback (even with the relay's added delay) so that flow control
/// is not what limits quinn: stream_receive_window = 16 MiB, receive_window = 32 MiB,
/// send_window = 32 MiB. Everything else (congestion control, MTU discovery, ...) is quinn's
/// default.
fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(16 << 20))
        .receive_window(VarInt::from_u32(32 << 20))
        .send_window(32 << 20);
    Arc::new(t)
}

/// A tokio multi-thread runtime with two worker threads.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime")
}

/// Server and client endpoints: the server on `127.0.0.1:0` presenting a self-signed
/// certificate for "localhost", the client trusting exactly that certificate. Must be called
/// inside the runtime.
fn endpoints() -> (Endpoint, Endpoint) {
    // quinn's rustls helpers already pick ring explicitly; installing it as the process
    // default too keeps any other rustls use in the process working. Fails harmlessly if
    // already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("generate self-signed certificate");
    let cert_der = certified.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()),
    );

    let mut server_config = ServerConfig::with_single_cert(vec![cert_der.clone()], key_der)
        .expect("build quinn server config");
    server_config.transport_config(transport());
    let server = Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind quinn server endpoint");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert_der)
        .expect("add self-signed certificate to root store");
    let mut client_config =
        ClientConfig::with_root_certificates(Arc::new(roots)).expect("build quinn client config");
    client_config.transport_config(transport());
    let mut client = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind quinn client endpoint");
    client.set_default_client_config(client_config);

    (server, client)
}

/// Accepts one connection on `server`.
async fn accept(server: &Endpoint) -> Connection {
    server
        .accept()
        .await
        .expect("server endpoint closed before a connection arrived")
        .await
        .expect("server side of the handshake")
}

/// Connects `client` to `addr` as "localhost" and waits for the handshake.
async fn connect(client: &Endpoint, addr: SocketAddr) -> Connection {
    client
        .connect(addr, "localhost")
        .expect("start connecting")
        .await
        .expect("client side of the handshake")
}

/// Closes the connection and both endpoints, and waits (briefly) for them to go idle.
async fn shut_down(conn: &Connection, client: &Endpoint, server: &Endpoint) {
    conn.close(VarInt::from_u32(0), b"done");
    client.close(VarInt::from_u32(0), b"done");
    server.close(VarInt::from_u32(0), b"done");
    let _ = tokio::time::timeout(IDLE_TIMEOUT, async {
        tokio::join!(client.wait_idle(), server.wait_idle());
    })
    .await;
}

/// Bulk: `total` bytes of `msg`-sized writes (one shared `Bytes` payload, written with
/// `SendStream::write_chunk`, so no per-write allocation or copy) over ONE unidirectional
/// stream, optionally through an impairing relay seeded with `seed`. Returns the time from the
/// first write until the server has read all `total` bytes.
pub fn bulk(total: u64, msg: usize, impair: Option<Impair>, seed: u64) -> Duration {
    assert!(msg > 0, "message size must be positive");
    let rt = runtime();
    rt.block_on(async move {
        let (server, client) = endpoints();
        let server_addr = server.local_addr().expect("server local address");
        // The relay must outlive the connection; it is dropped at the end of this block.
        let proxy = impair.map(|imp| Proxy::start(server_addr, imp, seed));
        let target = proxy.as_ref().map_or(server_addr, |p| p.addr);

        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let srv = server.clone();
        let server_task = tokio::spawn(async move {
            let conn = accept(&srv).await;
            let _ = ready_tx.send(());
            let mut recv = conn
                .accept_uni()
                .await
                .expect("accept unidirectional stream");
            let mut got = 0u64;
            while got < total {
                let chunk = recv
                    .read_chunk(usize::MAX, true)
                    .await
                    .expect("read bulk stream")
                    .expect("bulk stream ended before all bytes arrived");
                got += chunk.bytes.len() as u64;
            }
            let done = Instant::now();
            // Keep the connection open until the client closes it.
            (done, conn)
        });

        let conn = connect(&client, target).await;
        ready_rx.await.expect("server task failed to accept");

        let payload = Bytes::from(vec![0xA5u8; msg]);
        let mut send = conn.open_uni().await.expect("open unidirectional stream");
        let start = Instant::now();
        let mut left = total;
        while left > 0 {
            let chunk = if left >= msg as u64 {
                payload.clone()
            } else {
                payload.slice(..left as usize)
            };
            left -= chunk.len() as u64;
            send.write_chunk(chunk).await.expect("write bulk chunk");
        }
        send.finish().expect("finish bulk stream");
        let (done, server_conn) = server_task.await.expect("bulk server task");
        let elapsed = done.duration_since(start);

        shut_down(&conn, &client, &server).await;
        drop(server_conn);
        drop(proxy);
        elapsed
    })
}

/// One quinn flow of the fairness row: binds a server, sends its address on `server_tx`,
/// waits for the relay's address on `target_rx`, then sends `msg`-byte chunks on one stream
/// through it. Returns the bytes the server received between `from` and `until`.
pub fn timed_flow(
    msg: usize,
    server_tx: std::sync::mpsc::Sender<SocketAddr>,
    target_rx: std::sync::mpsc::Receiver<SocketAddr>,
    from: Instant,
    until: Instant,
) -> u64 {
    let rt = runtime();
    rt.block_on(async move {
        let (server, client) = endpoints();
        server_tx
            .send(server.local_addr().expect("server local address"))
            .expect("server address");
        let target = target_rx.recv().expect("relay address");
        let srv = server.clone();
        let server_task = tokio::spawn(async move {
            let conn = accept(&srv).await;
            let mut recv = conn.accept_uni().await.expect("accept stream");
            let (mut got, mut base) = (0u64, None);
            loop {
                let chunk = recv.read_chunk(usize::MAX, true).await;
                let Ok(Some(chunk)) = chunk else { break };
                got += chunk.bytes.len() as u64;
                let now = Instant::now();
                if now >= from && base.is_none() {
                    base = Some(got);
                }
                if now >= until {
                    break;
                }
            }
            (got - base.unwrap_or(got), conn)
        });
        let conn = connect(&client, target).await;
        let payload = Bytes::from(vec![0xA5u8; msg]);
        let mut send = conn.open_uni().await.expect("open stream");
        let writer = async { while send.write_chunk(payload.clone()).await.is_ok() {} };
        let (bytes, server_conn) = tokio::select! {
            r = server_task => r.expect("flow server task"),
            () = writer => panic!("the stream closed early"),
        };
        conn.close(VarInt::from_u32(0), b"done");
        drop(server_conn);
        bytes
    })
}

/// Small messages: `count` messages of `size` bytes (at most 65 535) on ONE unidirectional
/// stream, each framed as a big-endian u16 length then the payload and written with one
/// `write_chunk` call per message (the framed message is built once and shared). Returns the
/// time from the first write until the server has parsed the framing of all `count` messages.
pub fn small_messages(count: usize, size: usize) -> Duration {
    let len = u16::try_from(size).expect("message size must fit the u16 length prefix");
    let rt = runtime();
    rt.block_on(async move {
        let (server, client) = endpoints();
        let server_addr = server.local_addr().expect("server local address");

        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let srv = server.clone();
        let server_task = tokio::spawn(async move {
            let conn = accept(&srv).await;
            let _ = ready_tx.send(());
            let mut recv = conn
                .accept_uni()
                .await
                .expect("accept unidirectional stream");
            let mut parser = FrameParser::default();
            let mut parsed = 0usize;
            while parsed < count {
                let chunk = recv
                    .read_chunk(usize::MAX, true)
                    .await
                    .expect("read message stream")
                    .expect("message stream ended before all messages arrived");
                parsed += parser.feed(&chunk.bytes, size);
            }
            let done = Instant::now();
            (done, conn)
        });

        let conn = connect(&client, server_addr).await;
        ready_rx.await.expect("server task failed to accept");

        let mut framed = Vec::with_capacity(2 + size);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.resize(2 + size, 0x5A);
        let framed = Bytes::from(framed);

        let mut send = conn.open_uni().await.expect("open unidirectional stream");
        let start = Instant::now();
        for _ in 0..count {
            send.write_chunk(framed.clone())
                .await
                .expect("write small message");
        }
        send.finish().expect("finish message stream");
        let (done, server_conn) = server_task.await.expect("small-message server task");
        let elapsed = done.duration_since(start);

        shut_down(&conn, &client, &server).await;
        drop(server_conn);
        elapsed
    })
}

/// Incremental parser for u16-big-endian-length-prefixed messages split arbitrarily across
/// stream chunks.
#[derive(Default)]
struct FrameParser {
    /// Length-prefix bytes collected so far (0 or 1 when between chunks).
    header_have: usize,
    header: [u8; 2],
    /// Payload bytes of the current message still to come.
    body_left: usize,
}

impl FrameParser {
    /// Consumes `data`; returns how many messages it completed. Panics if a length prefix is
    /// not `expect_len` (that would be a framing bug).
    fn feed(&mut self, mut data: &[u8], expect_len: usize) -> usize {
        let mut done = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                if self.body_left == 0 {
                    done += 1;
                }
                continue;
            }
            self.header[self.header_have] = data[0];
            self.header_have += 1;
            data = &data[1..];
            if self.header_have == 2 {
                self.header_have = 0;
                let len = usize::from(u16::from_be_bytes(self.header));
                assert_eq!(len, expect_len, "framing error in small-message stream");
                if len == 0 {
                    done += 1;
                } else {
                    self.body_left = len;
                }
            }
        }
        done
    }
}

/// Ping-pong: `rounds` round trips of a `size`-byte message over one bidirectional stream: the
/// client writes `size` bytes, the server echoes them, the client reads exactly `size` bytes
/// back. 100 untimed warm-up rounds come first. Returns each timed round trip's duration.
pub fn pingpong(rounds: usize, size: usize) -> Vec<Duration> {
    const WARMUP: usize = 100;
    assert!(size > 0, "message size must be positive");
    let rt = runtime();
    rt.block_on(async move {
        let (server, client) = endpoints();
        let server_addr = server.local_addr().expect("server local address");

        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let srv = server.clone();
        let server_task = tokio::spawn(async move {
            let conn = accept(&srv).await;
            let _ = ready_tx.send(());
            let (mut send, mut recv) = conn.accept_bi().await.expect("accept bidirectional stream");
            let mut buf = vec![0u8; size];
            loop {
                match recv.read_exact(&mut buf).await {
                    Ok(()) => {}
                    // The client finished its side: all rounds are done.
                    Err(quinn::ReadExactError::FinishedEarly(0)) => break,
                    Err(e) => panic!("server read in ping-pong: {e}"),
                }
                send.write_all(&buf)
                    .await
                    .expect("server echo in ping-pong");
            }
            let _ = send.finish();
            conn
        });

        let conn = connect(&client, server_addr).await;
        ready_rx.await.expect("server task failed to accept");

        let payload = Bytes::from(vec![0xC3u8; size]);
        let mut back = vec![0u8; size];
        let (mut send, mut recv) = conn.open_bi().await.expect("open bidirectional stream");
        let mut times = Vec::with_capacity(rounds);
        for i in 0..WARMUP + rounds {
            let start = Instant::now();
            send.write_chunk(payload.clone())
                .await
                .expect("client write in ping-pong");
            recv.read_exact(&mut back)
                .await
                .expect("client read in ping-pong");
            if i >= WARMUP {
                times.push(start.elapsed());
            }
        }
        send.finish().expect("finish ping-pong stream");
        let server_conn = server_task.await.expect("ping-pong server task");

        shut_down(&conn, &client, &server).await;
        drop(server_conn);
        times
    })
}
