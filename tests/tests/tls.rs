//! The server behind its own TLS (`--tls-cert`, `--tls-key`) with a certificate the test
//! makes: logins, P2P connections (direct, and through the relay) and the relay network's
//! pings all work over `wss://`, and a client that does not trust the certificate is refused.

use punchline::api::relay::{pop_id, PopPinger};
use punchline::identity::KeyPair;
use punchline::transport::RouteKind;
use punchline::{SendFlags, Sockets, SocketsConfig};
use punchline_signaling::pops::WsPinger;
use punchline_signaling::tls::TlsClient;
use punchline_signaling::{ClientError, SignalingClient};
use rand_core::OsRng;
use std::path::{Path, PathBuf};
use std::time::Duration;

use punchline_tests::peers::{connect_pair, logged_in, wait};
use punchline_tests::util::rt;

/// A CA, and a certificate it signs for 127.0.0.1 and localhost, written to `dir`: the
/// paths of (the CA certificate, the server certificate, its key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "punchline test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Sends 50 reliable messages from `a` to `b` on a connection they make, and checks them;
/// the route `a`'s connection took.
fn talk(a: &Sockets, b: &Sockets) -> RouteKind {
    let (c, s) = connect_pair(a, b);
    for i in 0..50u32 {
        a.send_message_to_connection(c, i.to_be_bytes().to_vec(), SendFlags::RELIABLE)
            .unwrap();
    }
    let mut got = Vec::new();
    wait(Duration::from_secs(10), "50 messages", || {
        got.extend(b.receive_messages_on_connection(s, 50).unwrap());
        got.len() >= 50
    });
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload[..], (i as u32).to_be_bytes());
    }
    a.get_connection_info(c).unwrap().route
}

#[test]
fn signaling_the_relay_and_pop_pings_work_over_tls() {
    let dir = punchline_tests::util::Scratch::new("tls-test");
    let (ca, cert, key) = make_certificates(dir.path());
    let server = punchline_tests::server_process!(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = format!("wss://{}/", server.addr);
    let tls = TlsClient::with_ca_file(&ca).unwrap();

    // A client that trusts only the system's roots refuses the certificate.
    let k = KeyPair::generate(&mut OsRng);
    let s = Sockets::with_config(SocketsConfig {
        key: Some(k.clone()),
        ..SocketsConfig::default()
    })
    .unwrap();
    let refused =
        SignalingClient::connect_with(&url, &k, None, &s, Some(&TlsClient::system().unwrap()));
    match refused {
        Err(ClientError::Connect(why)) => assert!(why.contains("certificate"), "{why}"),
        other => panic!("a certificate no root vouches for was accepted: {other:?}"),
    }

    // Signals over TLS: a direct connection.
    let (a, _, _ca) = logged_in(&url, Some(&tls));
    let (b, _, _cb) = logged_in(&url, Some(&tls));
    assert_ne!(talk(&a, &b), RouteKind::Relayed);

    // The relay over TLS.
    let (a, _, ra) = logged_in(&url, Some(&tls));
    let (b, _, rb) = logged_in(&url, Some(&tls));
    a.set_p2p_transport(std::sync::Arc::new(ra.relay_transport()));
    b.set_p2p_transport(std::sync::Arc::new(rb.relay_transport()));
    assert_eq!(talk(&a, &b), RouteKind::Relayed);

    // The relay network's pings over TLS.
    let pinger = WsPinger::parse(&format!("tls={url}"))
        .unwrap()
        .with_tls(tls);
    let rtt = rt()
        .block_on(pinger.ping(pop_id("tls").unwrap()))
        .expect("a ping over TLS");
    assert!(rtt < Duration::from_secs(5), "{rtt:?}");
}
