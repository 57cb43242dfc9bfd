//! An accepted connection before it is a websocket: TLS when the server has a certificate,
//! the HTTP request head read (to tell `/healthz` and `/metrics` from an upgrade), and a
//! stream that gives the head back to the websocket handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A byte stream: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The largest request head read.
const MAX_HEAD: usize = 4096;

/// What the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The request target.
    pub path: String,
    /// It asks for a websocket.
    pub upgrade: bool,
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let upgrade = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("upgrade:") && l.contains("websocket")
    });
    Some(Head { path, upgrade })
}

/// Reads the request head (within `limit`): the head and every byte read, or `None` when
/// the client closed first.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> io::Result<Option<(Head, Vec<u8>)>> {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        loop {
            let mut chunk = [0u8; 1024];
            let room = (MAX_HEAD - buf.len()).min(chunk.len());
            let n = stream.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = parse_head(&buf) {
                return Ok(Some((head, buf)));
            }
            if buf.len() >= MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request head in time"))?
}

/// A stream that first gives back bytes already read from it.
pub struct Rewound<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewound<S> {
    /// `inner`, whose next bytes are to be `head` again.
    pub fn new(head: Vec<u8>, inner: S) -> Rewound<S> {
        Rewound { head, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_head_is_read_and_given_back_whole() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let request = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nrest";
        let writer = tokio::spawn(async move {
            for piece in request.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let (head, bytes) = read_head(&mut server, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            head,
            Head {
                path: "/chat".into(),
                upgrade: true
            }
        );
        let _client = writer.await.unwrap();
        let mut again = Rewound::new(bytes, server);
        let mut out = vec![0u8; request.len()];
        again.read_exact(&mut out).await.unwrap();
        assert_eq!(&out[..], &request[..]);
    }

    #[tokio::test]
    async fn a_head_too_large_or_too_slow_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(8192);
        client.write_all(&[b'a'; 5000]).await.unwrap();
        let e = read_head(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        let (_client, mut server) = tokio::io::duplex(64);
        let e = read_head(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
