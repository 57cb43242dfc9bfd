//! The embedded STUN responder (RFC 8489 Binding, on `stun-rs`), with RFC 5780 NAT
//! behaviour discovery when given a second address, and the client side of that discovery
//! ([`nat_check`]).
//!
//! With a primary address `IP1:P1` and an alternate IP `IP2`, the responder listens on the
//! four sockets `IP1:P1`, `IP1:P2`, `IP2:P1`, `IP2:P2` (`P2 = P1 + 1`), answers every
//! Binding request with its XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN and
//! OTHER-ADDRESS, and sends the answer from the socket a CHANGE-REQUEST asks for, to the
//! port a RESPONSE-PORT asks for.

use crate::limit::RateTable;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin, ResponsePort,
};
use stun_rs::attributes::stun::{ErrorCode, Fingerprint, MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessage, StunMessageBuilder,
    TransactionId,
};
use tokio::net::UdpSocket;

/// Largest datagram read.
const MAX_DATAGRAM: usize = 2048;

/// A running STUN responder.
#[derive(Debug)]
pub struct StunServer {
    addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StunServer {
    /// Answers Binding requests on UDP `primary` (on the current tokio runtime). With
    /// `alternate`, a second IP of this host, it also answers RFC 5780 behaviour-discovery
    /// requests (see the module docs); `primary`'s port must then be free one above too
    /// (port 0 picks such a pair).
    pub async fn start(
        primary: SocketAddr,
        alternate: Option<IpAddr>,
    ) -> std::io::Result<StunServer> {
        let sockets = match alternate {
            None => vec![Arc::new(UdpSocket::bind(primary).await?)],
            Some(ip2) => bind_four(primary, ip2).await?,
        };
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<std::io::Result<Vec<_>>>()?;
        let sockets = Arc::new(sockets);
        let rate = f64::from(RATE_PER_SOURCE);
        let limits = Arc::new(std::sync::Mutex::new(RateTable::new(
            RATE_SLOTS,
            rate,
            2.0 * rate,
        )));
        let tasks = (0..sockets.len())
            .map(|i| tokio::spawn(serve(sockets.clone(), i, limits.clone())))
            .collect();
        Ok(StunServer { addrs, tasks })
    }

    /// The primary address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The address with both IP and port changed, when discovery is on.
    pub fn other_addr(&self) -> Option<SocketAddr> {
        self.addrs.get(3).copied()
    }

    /// Stops answering (as dropping it does).
    pub fn stop(self) {}
}

impl Drop for StunServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds IP1:P1, IP1:P2, IP2:P1, IP2:P2 (in that order).
async fn bind_four(primary: SocketAddr, ip2: IpAddr) -> std::io::Result<Vec<Arc<UdpSocket>>> {
    let ip1 = primary.ip();
    for _ in 0..32 {
        let first = UdpSocket::bind(primary).await?;
        let p1 = first.local_addr()?.port();
        let Some(p2) = p1.checked_add(1) else {
            continue;
        };
        let rest = async {
            Ok::<_, std::io::Error>([
                UdpSocket::bind((ip1, p2)).await?,
                UdpSocket::bind((ip2, p1)).await?,
                UdpSocket::bind((ip2, p2)).await?,
            ])
        };
        match rest.await {
            Ok([b, c, d]) => {
                return Ok(vec![first, b, c, d].into_iter().map(Arc::new).collect());
            }
            Err(e) if primary.port() != 0 => return Err(e),
            Err(_) => continue, // a neighbour port was taken: try another pair
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free pair of adjacent ports on both addresses",
    ))
}

/// Binding requests answered per second from one source (an IPv4 address or an IPv6 /64);
/// a burst of twice this is allowed. Enough for every player behind one carrier-grade NAT
/// address gathering candidates at once; a flood from one source (or spoofed as one
/// victim) gets no more than this.
pub const RATE_PER_SOURCE: u32 = 100;
/// Slots of the per-source rate table (fixed memory, whatever the number of sources).
const RATE_SLOTS: usize = 8192;

/// Answers requests arriving on `sockets[i]`.
async fn serve(
    sockets: Arc<Vec<Arc<UdpSocket>>>,
    i: usize,
    limits: Arc<std::sync::Mutex<RateTable>>,
) {
    let Ok(addrs) = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<Vec<_>>>()
    else {
        return;
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match sockets[i].recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::trace!(error = %e, "STUN receive error");
                continue;
            }
        };
        let allowed = limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(from.ip());
        if !allowed {
            tracing::trace!(%from, "STUN source over its rate: no answer");
            continue;
        }
        if let Some(r) = respond(&buf[..n], from, i, &addrs) {
            let _ = sockets[r.via].send_to(&r.bytes, r.to).await;
        }
    }
}

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The encoded STUN message.
    pub bytes: Vec<u8>,
    /// Which of the responder's addresses sends it.
    pub via: usize,
    /// Where it goes.
    pub to: SocketAddr,
}

/// The answer to `datagram` from `from`, received on `addrs[at]`, where `addrs` are the
/// responder's addresses: one, or the four of behaviour discovery (IP1:P1, IP1:P2, IP2:P1,
/// IP2:P2). `None` for anything but a Binding request (no answer to garbage).
///
/// A plain responder's answer is never more than twice its request (save the least an
/// answer can be, the mapped address alone, to a bare IPv6 request): XOR-MAPPED-ADDRESS only,
/// and FINGERPRINT if the request carried one; CHANGE-REQUEST asking for a change and
/// RESPONSE-PORT are refused with 420. A discovery responder, which an operator runs for NAT
/// testing, adds RESPONSE-ORIGIN and OTHER-ADDRESS to every answer, as RFC 5780 clients
/// need from their first, bare request on (56 bytes for 20), and honours RESPONSE-PORT.
pub fn respond(
    datagram: &[u8],
    from: SocketAddr,
    at: usize,
    addrs: &[SocketAddr],
) -> Option<Reply> {
    if at >= addrs.len() || (addrs.len() != 1 && addrs.len() != 4) {
        return None;
    }
    let msg = match MessageDecoderBuilder::default().build().decode(datagram) {
        Ok((msg, _)) => msg,
        Err(e) => {
            tracing::debug!(%from, error = %e, "not a STUN message: no answer");
            return None;
        }
    };
    if msg.method() != BINDING || msg.class() != MessageClass::Request {
        return None;
    }
    let response_port = msg
        .get::<ResponsePort>()
        .and_then(|a| a.as_response_port().ok())
        .map(|p| p.as_u16());
    let fingerprint = msg.get::<Fingerprint>().is_some();
    let (change_ip, change_port) = change_flags(&msg);
    if addrs.len() == 1 {
        if change_ip || change_port || response_port.is_some() {
            return Some(Reply {
                bytes: error_answer(&msg, 420, "no discovery")?,
                via: at,
                to: from,
            });
        }
        let bytes = binding_answer(&msg, from, None, fingerprint)?;
        return Some(Reply {
            bytes,
            via: at,
            to: from,
        });
    }
    // Index bits: 1 = port changed, 2 = IP changed (see `bind_four`).
    let via = at ^ usize::from(change_port) ^ (usize::from(change_ip) << 1);
    // OTHER-ADDRESS: both IP and port changed, from the address asked.
    let bytes = binding_answer(&msg, from, Some((addrs[via], addrs[at ^ 3])), fingerprint)?;
    // RFC 5780 RESPONSE-PORT: the answer goes to another port of the asker.
    let to = response_port.map_or(from, |p| SocketAddr::new(from.ip(), p));
    Some(Reply { bytes, via, to })
}

/// The CHANGE-REQUEST flags: (change IP, change port).
fn change_flags(msg: &StunMessage) -> (bool, bool) {
    msg.get::<ChangeRequest>()
        .and_then(|a| a.as_change_request().ok())
        .map_or((false, false), |c| {
            let f = c.flags();
            (
                f.contains(ChangeRequestFlags::ChangeIp),
                f.contains(ChangeRequestFlags::ChangePort),
            )
        })
}

fn encode(msg: &StunMessage) -> Option<Vec<u8>> {
    let mut out = vec![0u8; MAX_DATAGRAM];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut out, msg)
        .ok()?;
    out.truncate(n);
    Some(out)
}

/// A Binding success for `from`; with `discovery` (the address it is sent from, the other
/// address) the RFC 5780 attributes too.
fn binding_answer(
    req: &StunMessage,
    from: SocketAddr,
    discovery: Option<(SocketAddr, SocketAddr)>,
    fingerprint: bool,
) -> Option<Vec<u8>> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*req.transaction_id())
        .with_attribute(XorMappedAddress::from(from));
    if let Some((origin, other)) = discovery {
        b = b
            .with_attribute(ResponseOrigin::from(origin))
            .with_attribute(OtherAddress::from(other));
    }
    if fingerprint {
        b = b.with_attribute(Fingerprint::default());
    }
    encode(&b.build())
}

fn error_answer(req: &StunMessage, code: u16, reason: &str) -> Option<Vec<u8>> {
    let err = stun_rs::ErrorCode::new(code, reason).ok()?;
    let msg = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
        .with_transaction_id(*req.transaction_id())
        .with_attribute(ErrorCode::from(err))
        .build();
    encode(&msg)
}

/// How a NAT maps or filters (RFC 4787 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// The same for every remote address and port.
    EndpointIndependent,
    /// Depends on the remote address.
    AddressDependent,
    /// Depends on the remote address and port.
    AddressAndPortDependent,
}

impl std::fmt::Display for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// What [`nat_check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// Our socket's address.
    pub local: SocketAddr,
    /// Our address as the server saw it.
    pub mapped: SocketAddr,
    /// True when the mapped address is our own: no NAT in between.
    pub no_nat: bool,
    /// How the NAT maps.
    pub mapping: Behaviour,
    /// How it filters.
    pub filtering: Behaviour,
}

impl NatReport {
    /// The classic name: none, full cone, restricted cone, port-restricted cone, symmetric.
    pub fn nat_type(&self) -> &'static str {
        use Behaviour::*;
        match (self.no_nat, self.mapping, self.filtering) {
            (true, _, EndpointIndependent) => "none (open internet)",
            (true, _, _) => "none, behind a firewall",
            (false, EndpointIndependent, EndpointIndependent) => "full cone",
            (false, EndpointIndependent, AddressDependent) => "restricted cone",
            (false, EndpointIndependent, AddressAndPortDependent) => "port-restricted cone",
            (false, _, _) => "symmetric",
        }
    }
}

impl std::fmt::Display for NatReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "local address:  {}", self.local)?;
        writeln!(f, "mapped address: {}", self.mapped)?;
        writeln!(f, "mapping:        {}", self.mapping)?;
        writeln!(f, "filtering:      {}", self.filtering)?;
        write!(f, "NAT type:       {}", self.nat_type())
    }
}

/// Why a check could not finish.
#[derive(Debug, thiserror::Error)]
pub enum NatCheckError {
    /// A socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer at all.
    #[error("no answer from the STUN server at {0}")]
    NoAnswer(SocketAddr),
    /// The server answered without an OTHER-ADDRESS: it cannot tell NAT behaviour.
    #[error(
        "the STUN server at {0} does not support RFC 5780 behaviour discovery (no OTHER-ADDRESS)"
    )]
    NoDiscovery(SocketAddr),
}

/// One Binding answer: the mapped address, and the OTHER-ADDRESS if given.
struct Answer {
    mapped: SocketAddr,
    other: Option<SocketAddr>,
}

/// A Binding request, asking the answer to come from a changed (IP, port).
fn request(tid: TransactionId, change: (bool, bool)) -> Option<Vec<u8>> {
    // Always a CHANGE-REQUEST (empty when nothing changes): a request that plainly asks
    // for discovery.
    let flags = match change {
        (false, false) => None,
        (true, true) => Some(ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort),
        (true, false) => Some(ChangeRequestFlags::ChangeIp.into()),
        (false, true) => Some(ChangeRequestFlags::ChangePort.into()),
    };
    let req = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(tid)
        .with_attribute(ChangeRequest::new(flags));
    encode(&req.build())
}

/// Sends a Binding request to `to` (asking the answer to come from a changed IP and/or
/// port) and waits for the answer: up to `tries` sends, `wait` apart.
async fn binding(
    socket: &UdpSocket,
    to: SocketAddr,
    change: (bool, bool),
    tries: u32,
    wait: Duration,
) -> std::io::Result<Option<Answer>> {
    let tid = TransactionId::default();
    let bytes = request(tid, change).ok_or_else(|| std::io::Error::other("STUN encoding"))?;
    let decoder = MessageDecoderBuilder::default().build();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    for _ in 0..tries {
        socket.send_to(&bytes, to).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let r = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
            let Ok(r) = r else { break };
            let (n, _) = r?;
            let Ok((msg, _)) = decoder.decode(&buf[..n]) else {
                continue;
            };
            if *msg.transaction_id() != tid || msg.class() != MessageClass::SuccessResponse {
                continue;
            }
            let mapped = msg
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address())
                .or_else(|| {
                    msg.get::<MappedAddress>()
                        .and_then(|a| a.as_mapped_address().ok())
                        .map(|a| *a.socket_address())
                });
            let Some(mapped) = mapped else { continue };
            let other = msg
                .get::<OtherAddress>()
                .and_then(|a| a.as_other_address().ok())
                .map(|a| *a.socket_address());
            return Ok(Some(Answer { mapped, other }));
        }
    }
    Ok(None)
}

/// Finds this host's NAT mapping and filtering behaviour against a STUN server with RFC
/// 5780 support at `server` (RFC 5780 §4.3 and §4.4), from a socket bound to `bind`.
pub async fn nat_check(server: SocketAddr, bind: SocketAddr) -> Result<NatReport, NatCheckError> {
    let socket = UdpSocket::bind(bind).await?;
    let mut local = socket.local_addr()?;
    if local.ip().is_unspecified() {
        // Bound to every address: the one the server is reached from is the one that
        // counts (a NAT that keeps our port would otherwise look like no NAT at all).
        let probe = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
        probe.connect(server).await?;
        local.set_ip(probe.local_addr()?.ip());
    }
    let wait = Duration::from_millis(300);
    // Mapping test I.
    let first = binding(&socket, server, (false, false), 5, wait)
        .await?
        .ok_or(NatCheckError::NoAnswer(server))?;
    let other = first.other.ok_or(NatCheckError::NoDiscovery(server))?;
    let no_nat = first.mapped == local;
    // Mapping tests II and III: the alternate IP with the primary port, then both changed.
    let alt_ip = SocketAddr::new(other.ip(), server.port());
    let second = binding(&socket, alt_ip, (false, false), 5, wait)
        .await?
        .ok_or(NatCheckError::NoAnswer(alt_ip))?;
    let mapping = if second.mapped == first.mapped {
        Behaviour::EndpointIndependent
    } else {
        let third = binding(&socket, other, (false, false), 5, wait)
            .await?
            .ok_or(NatCheckError::NoAnswer(other))?;
        if third.mapped == second.mapped {
            Behaviour::AddressDependent
        } else {
            Behaviour::AddressAndPortDependent
        }
    };
    // Filtering tests II and III: answers from a changed IP and port, then a changed port.
    let filtering = if binding(&socket, server, (true, true), 3, wait)
        .await?
        .is_some()
    {
        Behaviour::EndpointIndependent
    } else if binding(&socket, server, (false, true), 3, wait)
        .await?
        .is_some()
    {
        Behaviour::AddressDependent
    } else {
        Behaviour::AddressAndPortDependent
    };
    Ok(NatReport {
        local,
        mapped: first.mapped,
        no_nat,
        mapping,
        filtering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        [
            "10.0.0.1:3478",
            "10.0.0.1:3479",
            "10.0.0.2:3478",
            "10.0.0.2:3479",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
    }

    fn decode(bytes: &[u8]) -> StunMessage {
        MessageDecoderBuilder::default()
            .build()
            .decode(bytes)
            .unwrap()
            .0
    }

    #[test]
    fn change_requests_pick_the_sending_address_and_other_address_is_the_far_corner() {
        let from: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let all = addrs();
        for (change, via) in [
            ((false, false), 0),
            ((false, true), 1),
            ((true, false), 2),
            ((true, true), 3),
        ] {
            let tid = TransactionId::default();
            let r = respond(&request(tid, change).unwrap(), from, 0, &all).unwrap();
            assert_eq!((r.via, r.to), (via, from), "{change:?}");
            let m = decode(&r.bytes);
            assert_eq!(*m.transaction_id(), tid);
            assert_eq!(m.class(), MessageClass::SuccessResponse);
            let mapped = *m
                .get::<XorMappedAddress>()
                .unwrap()
                .as_xor_mapped_address()
                .unwrap()
                .socket_address();
            assert_eq!(mapped, from);
            let other = *m
                .get::<OtherAddress>()
                .unwrap()
                .as_other_address()
                .unwrap()
                .socket_address();
            assert_eq!(other, all[3]);
            let origin = *m
                .get::<ResponseOrigin>()
                .unwrap()
                .as_response_origin()
                .unwrap()
                .socket_address();
            assert_eq!(origin, all[via]);
        }
    }

    #[test]
    fn without_a_second_address_a_change_request_gets_420_and_garbage_nothing() {
        let from: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let one = &addrs()[..1];
        let r = respond(
            &request(TransactionId::default(), (true, true)).unwrap(),
            from,
            0,
            one,
        )
        .unwrap();
        assert_eq!(decode(&r.bytes).class(), MessageClass::ErrorResponse);
        let plain = respond(
            &request(TransactionId::default(), (false, false)).unwrap(),
            from,
            0,
            one,
        )
        .unwrap();
        let m = decode(&plain.bytes);
        assert_eq!(m.class(), MessageClass::SuccessResponse);
        assert!(m.get::<OtherAddress>().is_none());
        assert_eq!(respond(b"not stun at all, just bytes", from, 0, one), None);
        assert_eq!(respond(&[0u8; 20], from, 0, one), None);
        assert_eq!(
            respond(
                &request(TransactionId::default(), (false, false)).unwrap(),
                from,
                5,
                one
            ),
            None
        );
    }

    fn bare() -> Vec<u8> {
        encode(&StunMessageBuilder::new(BINDING, MessageClass::Request).build()).unwrap()
    }

    #[test]
    fn a_plain_answer_is_at_most_twice_its_request() {
        let v4: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let one = &addrs()[..1];
        let req = bare();
        assert_eq!(req.len(), 20);
        let r = respond(&req, v4, 0, one).unwrap();
        assert_eq!(r.bytes.len(), 32, "1.6 times the request");
        let m = decode(&r.bytes);
        assert!(m.get::<XorMappedAddress>().is_some());
        assert!(m.get::<OtherAddress>().is_none());
        assert!(m.get::<MappedAddress>().is_none());
        // FINGERPRINT is echoed.
        let fp = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(Fingerprint::default())
            .build();
        let req = encode(&fp).unwrap();
        let r = respond(&req, v4, 0, one).unwrap();
        assert!(decode(&r.bytes).get::<Fingerprint>().is_some());
        assert!(r.bytes.len() <= 2 * req.len());
        // A bare IPv6 request gets the mapped address alone (44 bytes: the least an answer
        // can be).
        let v6: SocketAddr = "[2001:db8::9]:5000".parse().unwrap();
        let r = respond(&bare(), v6, 0, one).unwrap();
        assert_eq!(r.bytes.len(), 44);
        // A discovery responder tells a bare request of the other address.
        let r = respond(&bare(), v4, 0, &addrs()).unwrap();
        assert_eq!(r.bytes.len(), 56);
        assert!(decode(&r.bytes).get::<OtherAddress>().is_some());
    }

    #[test]
    fn response_port_redirects_the_answer_only_in_discovery() {
        let from: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let req = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(ResponsePort::new(6000))
            .build();
        let req = encode(&req).unwrap();
        let r = respond(&req, from, 0, &addrs()).unwrap();
        assert_eq!(r.to, "192.0.2.9:6000".parse().unwrap());
        let r = respond(&req, from, 0, &addrs()[..1]).unwrap();
        assert_eq!(r.to, from);
        assert_eq!(decode(&r.bytes).class(), MessageClass::ErrorResponse);
    }
}
