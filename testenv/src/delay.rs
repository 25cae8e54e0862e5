//! A TCP proxy on loopback that adds a fixed delay to every byte in each direction:
//! a server "far away" (Exchange Online is 20-50 ms from most clients) for measuring
//! how a client's round trips cost, which loopback hides.
//!
//! Each direction reads what arrives, stamps it with `now + delay` and hands it to a
//! writer that sends it at that time, so the delay adds latency without limiting
//! throughput (up to `IN_FLIGHT` chunks wait at once). TLS passes through untouched:
//! the client still verifies the server's certificate for `localhost`.
//!
//! Written here rather than taken from a crate: what a benchmark needs is ~80 lines
//! on tokio, and the network-emulation tools (`tc netem`) need root and a namespace.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Chunks read but not yet due, per direction (each at most `CHUNK` bytes).
const IN_FLIGHT: usize = 512;
const CHUNK: usize = 64 * 1024;

/// A running proxy; dropping it stops accepting (open connections end with their peers).
pub struct DelayProxy {
    port: u16,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards each connection to `target`,
    /// delaying each direction by `one_way` (the round trip grows by twice that).
    pub async fn start(target: SocketAddr, one_way: Duration) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return; // dropping `client` closes it: the client sees the refusal
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, one_way),
                        pump(server_read, client_write, one_way)
                    );
                });
            }
        });
        Ok(DelayProxy { port, accept })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it arrived; at end of input, shuts
/// `to`'s write side down once everything before it is delivered.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now() + delay, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
        // `tx` drops here: the writer drains what is queued, then sees the end.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: a round trip takes at least twice the delay,
    /// bytes arrive intact and in order, and the end of input passes through.
    #[tokio::test]
    async fn delays_both_directions_and_keeps_the_bytes() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let proxy = DelayProxy::start(target, Duration::from_millis(25))
            .await
            .unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        c.read_exact(&mut pong).await.unwrap();
        let rtt = started.elapsed();
        assert_eq!(&pong, b"ping");
        assert!(rtt >= Duration::from_millis(50), "round trip took {rtt:?}");
        let (mut r, mut w) = c.into_split();
        let expected = sent.clone();
        let send = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        send.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes changed on the way");
    }
}
