//! The relay network's points of presence as the client sees them: signaling servers (each
//! a relay) named by up to four letters, pinged over their websocket. [`WsPinger`] is the
//! [`PopPinger`] that [`Sockets::set_relay_network`](punchline::Sockets::set_relay_network)
//! takes, so the Utils relay calls (POP list, pings, ping locations) work against real
//! servers.
//!
//! One round trip is a websocket ping answered by the server's pong, on a connection opened
//! for it (the connect and the server's greeting are not counted), so it measures the path
//! relayed datagrams take: the client's TCP connection to the relay.

use crate::tls::TlsClient;
use futures_util::{SinkExt, StreamExt};
use punchline::api::relay::{pop_id, PopId, PopPinger};
use rand_core::{OsRng, RngCore};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as Frame;

/// Frames read while waiting for the pong before the server counts as not answering.
const MAX_FRAMES: usize = 16;

/// Pings POPs (signaling servers) over their websockets.
#[derive(Debug, Clone)]
pub struct WsPinger {
    pops: Vec<(PopId, String)>,
    tls: Option<TlsClient>,
}

impl WsPinger {
    /// POPs from `name=ws://host:port/` pairs separated by commas, e.g.
    /// `fra=ws://10.0.0.1:7373/,iad=ws://10.0.0.2:7373/`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut pops: Vec<(PopId, String)> = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| format!("POP {entry:?} is not NAME=ws://HOST:PORT/"))?;
            let id = pop_id(name)
                .ok_or_else(|| format!("POP name {name:?} is not 1 to 4 letters or digits"))?;
            if !url.starts_with("ws://") && !url.starts_with("wss://") {
                return Err(format!("POP {name}: {url:?} is not a ws:// URL"));
            }
            if pops.iter().any(|p| p.0 == id) {
                return Err(format!("POP {name} is named twice"));
            }
            pops.push((id, url.to_string()));
        }
        Ok(Self { pops, tls: None })
    }

    /// Checks `wss://` POPs' certificates against `tls` (by default: the system's roots and
    /// `PUNCHLINE_SIGNALING_CA_FILE`, as [`TlsClient::from_env`]).
    pub fn with_tls(mut self, tls: TlsClient) -> Self {
        self.tls = Some(tls);
        self
    }
}

impl PopPinger for WsPinger {
    fn pops(&self) -> Vec<PopId> {
        self.pops.iter().map(|p| p.0).collect()
    }

    fn ping(&self, pop: PopId) -> Pin<Box<dyn Future<Output = Result<Duration, String>> + Send>> {
        let url = self.pops.iter().find(|p| p.0 == pop).map(|p| p.1.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let url = url.ok_or("no such POP")?;
            let mut ws = crate::tls::dial(&url, tls.as_ref())
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            // The server speaks first (its login challenge): the connection is up.
            ws.next()
                .await
                .ok_or("closed before its greeting")?
                .map_err(|e| e.to_string())?;
            let mut token = [0u8; 8];
            OsRng.fill_bytes(&mut token);
            let sent = Instant::now();
            ws.send(Frame::Ping(token.to_vec().into()))
                .await
                .map_err(|e| e.to_string())?;
            let mut rtt = None;
            for _ in 0..MAX_FRAMES {
                match ws.next().await {
                    Some(Ok(Frame::Pong(p))) if p.as_ref() == token => {
                        rtt = Some(sent.elapsed());
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("closed before it answered".into()),
                }
            }
            let _ = ws.close(None).await;
            rtt.ok_or_else(|| "no pong among the server's frames".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop_lists_parse_and_bad_ones_say_why() {
        let p = WsPinger::parse("fra=ws://127.0.0.1:1/, iad=ws://127.0.0.1:2/").unwrap();
        assert_eq!(
            p.pops(),
            vec![pop_id("fra").unwrap(), pop_id("iad").unwrap()]
        );
        for (bad, says) in [
            ("fra", "NAME=ws://"),
            ("toolong=ws://a/", "1 to 4"),
            ("fra=http://a/", "not a ws://"),
            ("fra=ws://a/,fra=ws://b/", "twice"),
        ] {
            let e = WsPinger::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
