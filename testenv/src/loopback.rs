//! A TCP server on 127.0.0.1 with its own thread and Tokio runtime, for the SMTP parts
//! and the forwarder in front of Dovecot's plain submission port. Its own runtime keeps
//! it answering while a test blocks its runtime (waiting on a child process, say), and
//! stopping it closes the listener and every connection at once, as a server going down
//! does: clients then get "connection refused", not a port that accepts and hangs up.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// A running server; dropping it stops it (the listener and all connections close).
#[derive(Debug)]
pub(crate) struct LoopbackServer {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Listens with SO_REUSEADDR, so that a stopped server can take its port again while its
/// closed connections linger in TIME_WAIT.
fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(128)
}

impl LoopbackServer {
    /// Listens on `127.0.0.1:port` (0: a free port) and runs `serve` for each connection
    /// on the server's thread, named `name`. Returns once the port is bound.
    pub(crate) fn start<F, Fut>(name: &str, port: u16, serve: F) -> Result<LoopbackServer>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound, bound_rx) = std::sync::mpsc::channel::<std::io::Result<u16>>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match listen(port) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = bound.send(Err(e));
                            return;
                        }
                    };
                    let _ = bound.send(listener.local_addr().map(|a| a.port()));
                    let accept = async {
                        loop {
                            match listener.accept().await {
                                Ok((tcp, _)) => {
                                    tokio::spawn(serve(tcp));
                                }
                                // Out of file descriptors, say: keep serving the others.
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept => {}
                    }
                });
                // Dropping the runtime drops the connections' tasks, closing their sockets.
            })
            .context("spawn server thread")?;
        let port = bound_rx
            .recv()
            .map_err(|_| anyhow!("{name}: server thread ended before listening"))?
            .with_context(|| format!("{name}: listen on 127.0.0.1:{port}"))?;
        Ok(LoopbackServer {
            port,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
