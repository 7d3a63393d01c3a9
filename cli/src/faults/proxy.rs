//! A TCP proxy that injects network faults between two parts of the system
//! under test: added latency, a stall (bytes stop moving both ways while
//! connections stay open, as behind a partition that drops packets), a
//! reset of every open connection, and refusal (open connections reset and
//! new ones refused, as while a server restarts).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};

/// What the proxy does to the traffic through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes pass as they come.
    Pass,
    /// Every chunk waits this long before it is passed on.
    Latency(Duration),
    /// Nothing moves; connections stay open and new ones are accepted and held.
    Stall,
    /// Every connection is reset, and new ones are reset as they arrive.
    Refuse,
}

#[derive(Clone, Copy, Debug)]
struct State {
    mode: Mode,
    /// Bumped by [`FaultProxy::reset`]: connections of an older generation end with a reset.
    generation: u64,
}

/// A fault-injecting TCP proxy on a loopback port of its own.
#[derive(Clone, Debug)]
pub struct FaultProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    state: watch::Sender<State>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            generation: 0,
        });
        let proxy = Self { addr, state };
        let accepting = proxy.state.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let state = accepting.subscribe();
                tokio::spawn(relay(inbound, upstream, state));
            }
        });
        Ok(proxy)
    }

    /// Switches every connection, open and new, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|s| s.mode = mode);
    }

    /// Resets every open connection (TCP RST both ways); new ones pass.
    pub fn reset(&self) {
        self.state.send_modify(|s| {
            s.generation += 1;
            s.mode = Mode::Pass;
        });
    }
}

/// Carries one connection until either side closes or a fault ends it.
async fn relay(inbound: TcpStream, upstream: SocketAddr, state: watch::Receiver<State>) {
    let born = state.borrow().generation;
    // Closing with a zero linger sends RST: a fault ends a connection as a
    // crashed peer or a middlebox would, not with an orderly FIN.
    let _ = inbound.set_zero_linger();
    if state.borrow().mode == Mode::Refuse {
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = outbound.set_zero_linger();
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        () = pump(in_read, out_write, state.clone(), born) => {}
        () = pump(out_read, in_write, state, born) => {}
    }
}

/// True when a connection born in generation `born` must end now.
fn ended(state: &State, born: u64) -> bool {
    state.generation != born || state.mode == Mode::Refuse
}

/// Copies `from` to `to` under the proxy's current mode.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = state.wait_for(|s| ended(s, born)) => return,
        };
        // Held while stalled: bytes read as the stall began wait with the rest.
        let mode = match state
            .wait_for(|s| ended(s, born) || s.mode != Mode::Stall)
            .await
        {
            Ok(s) if !ended(&s, born) => s.mode,
            _ => return,
        };
        if let Mode::Latency(delay) = mode {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> std::io::Result<()> {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn the_proxy_passes_stalls_resets_and_refuses() -> anyhow::Result<()> {
        let proxy = FaultProxy::start(echo().await).await?;
        let mut stream = TcpStream::connect(proxy.addr).await?;
        round_trip(&mut stream).await?;

        proxy.set(Mode::Stall);
        let stalled =
            tokio::time::timeout(Duration::from_millis(200), round_trip(&mut stream)).await;
        assert!(stalled.is_err(), "bytes moved through a stall");
        proxy.set(Mode::Pass);
        // The bytes held by the stall arrive now.
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;

        proxy.set(Mode::Latency(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        round_trip(&mut stream).await?;
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "no latency added"
        );

        proxy.reset();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            round_trip(&mut stream).await.is_err(),
            "the connection outlived a reset"
        );
        let mut fresh = TcpStream::connect(proxy.addr).await?;
        round_trip(&mut fresh).await?;

        proxy.set(Mode::Refuse);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            round_trip(&mut fresh).await.is_err(),
            "open connections are refused too"
        );
        let mut refused = TcpStream::connect(proxy.addr).await?;
        assert!(
            round_trip(&mut refused).await.is_err(),
            "a new connection got through"
        );
        proxy.set(Mode::Pass);
        round_trip(&mut TcpStream::connect(proxy.addr).await?).await?;
        Ok(())
    }
}
