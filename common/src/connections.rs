//! Accepting connections on a hostile network. Every listener (gRPC and
//! admin) accepts through [`Acceptor`]:
//!
//! - at most `max_connections` open at once per process and
//!   `max_connections_per_peer` per peer address: beyond them a new
//!   connection is closed at once (the peer sees a reset, not a hang);
//! - a connection must send its first byte within `first_byte_timeout_ms`,
//!   and one that has sent nothing for `idle_timeout_ms` is closed (HTTP/2
//!   keepalive pings, answered by live clients, are reads too, so only a
//!   silent peer is idle);
//! - accept errors back off (10 ms doubling to 1 s), so running out of file
//!   descriptors never spins the accept loop, and are logged at most once a
//!   second.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Sleep,
};

/// Limits on the connections of one listener, and the HTTP/2 settings that
/// bound what one connection may ask for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections open at once, per listener.
    pub max_connections: usize,
    /// Connections open at once from one peer address (behind a mesh the
    /// peer is the sidecar, which multiplexes calls over few connections).
    pub max_connections_per_peer: usize,
    /// How soon a new connection must send its first byte.
    pub first_byte_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Interval of HTTP/2 keepalive pings; a peer that does not answer one
    /// within `keepalive_timeout_ms` is dropped.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// Concurrent calls (streams) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// The largest header block a call may send.
    pub max_header_list_bytes: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4_096,
            max_connections_per_peer: 512,
            first_byte_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            max_concurrent_streams: 200,
            max_header_list_bytes: 16 * 1024,
        }
    }
}

/// The connections one listener holds, per peer.
#[derive(Debug, Default)]
struct Peers {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Peers {
    /// Counts a connection from `ip`, unless it has `max` already.
    fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

/// A peer's share of the connections, given back when the connection closes.
#[derive(Debug)]
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts the connections of one listener under [`ConnectionLimits`].
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
    peers: Arc<Peers>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            open: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            listener,
            limits,
            peers: Arc::default(),
        }
    }

    /// The next admitted connection. Refused ones are closed here; accept
    /// errors are waited out.
    pub async fn accept(&self) -> Guarded {
        let mut backoff = Duration::from_millis(10);
        let mut last_report: Option<Instant> = None;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    if let Some(guarded) = self.admit(stream, peer) {
                        return guarded;
                    }
                }
                Err(error) => {
                    if last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(%error, retry_in = ?backoff, "cannot accept connections");
                        last_report = Some(Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Option<Guarded> {
        let Ok(permit) = Arc::clone(&self.open).try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: the listener is at its limit");
            return None;
        };
        let Some(slot) = self
            .peers
            .admit(peer.ip(), self.limits.max_connections_per_peer.max(1))
        else {
            tracing::debug!(%peer, "connection refused: the peer is at its limit");
            return None;
        };
        let _ = stream.set_nodelay(true);
        Some(Guarded {
            local: stream.local_addr().ok(),
            peer,
            stream,
            deadline: Box::pin(tokio::time::sleep(Duration::from_millis(
                self.limits.first_byte_timeout_ms,
            ))),
            idle: Duration::from_millis(self.limits.idle_timeout_ms),
            _permit: permit,
            _slot: slot,
        })
    }

    /// The admitted connections as a stream, for `serve_with_incoming`:
    /// accepted by a task of their own until `stop` (or the receiver) ends.
    pub fn incoming(self) -> tokio_stream::wrappers::ReceiverStream<Result<Guarded, io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let guarded = tokio::select! {
                    guarded = self.accept() => guarded,
                    () = tx.closed() => return,
                };
                if tx.send(Ok(guarded)).await.is_err() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// An admitted connection: closed when silent too long, and counted
/// against the limits until it is dropped.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    local: Option<SocketAddr>,
    peer: SocketAddr,
    /// When the peer must have sent something (its first byte, or its next).
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
    _slot: PeerSlot,
}

impl Guarded {
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn acceptor(limits: ConnectionLimits) -> (SocketAddr, Arc<Acceptor>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = listener.local_addr().expect("an address");
        (addr, Arc::new(Acceptor::new(listener, limits)))
    }

    /// Reads until the server closes the connection; true if it did within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(within, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Serves each admitted connection by reading it until it fails.
    fn serve(acceptor: Arc<Acceptor>) {
        tokio::spawn(async move {
            loop {
                let mut guarded = acceptor.accept().await;
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = guarded.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_first_byte_timeout() {
        let (addr, acceptor) = acceptor(ConnectionLimits {
            first_byte_timeout_ms: 200,
            idle_timeout_ms: 60_000,
            ..ConnectionLimits::default()
        })
        .await;
        serve(acceptor);
        let mut silent = TcpStream::connect(addr).await.expect("connected");
        assert!(closed_within(&mut silent, Duration::from_secs(2)).await);
        let mut talking = TcpStream::connect(addr).await.expect("connected");
        talking.write_all(b"hello").await.expect("written");
        assert!(!closed_within(&mut talking, Duration::from_millis(400)).await);
    }

    #[tokio::test]
    async fn a_connection_silent_for_the_idle_timeout_is_closed() {
        let (addr, acceptor) = acceptor(ConnectionLimits {
            first_byte_timeout_ms: 5_000,
            idle_timeout_ms: 300,
            ..ConnectionLimits::default()
        })
        .await;
        serve(acceptor);
        let mut stream = TcpStream::connect(addr).await.expect("connected");
        for _ in 0..4 {
            stream.write_all(b"ping").await.expect("written");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(
            !closed_within(&mut stream, Duration::from_millis(10)).await,
            "closed while talking"
        );
        assert!(
            closed_within(&mut stream, Duration::from_secs(2)).await,
            "kept while silent"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_limits_are_closed_at_once() {
        let (addr, acceptor) = acceptor(ConnectionLimits {
            max_connections: 8,
            max_connections_per_peer: 3,
            ..ConnectionLimits::default()
        })
        .await;
        serve(acceptor);
        let mut kept = Vec::new();
        for _ in 0..3 {
            let mut stream = TcpStream::connect(addr).await.expect("connected");
            stream.write_all(b"x").await.expect("written");
            kept.push(stream);
        }
        let mut fourth = TcpStream::connect(addr).await.expect("connected");
        assert!(
            closed_within(&mut fourth, Duration::from_secs(1)).await,
            "a fourth from one peer"
        );
        drop(kept.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = TcpStream::connect(addr).await.expect("connected");
        again.write_all(b"x").await.expect("written");
        assert!(
            !closed_within(&mut again, Duration::from_millis(300)).await,
            "a freed slot is reused"
        );
    }
}
