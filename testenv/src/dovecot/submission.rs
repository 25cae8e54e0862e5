//! Dovecot's SMTP submission service in a test instance: its ports, and the forwarder
//! that makes the plain port behave like a remote server's port 587.
//!
//! Dovecot treats a connection whose remote address equals its local address as secure
//! (`client->secured` in login-common), so a client on 127.0.0.1 talking to 127.0.0.1
//! could AUTH on the plain port without STARTTLS, and EHLO would offer AUTH before it.
//! No setting changes that. So Dovecot's own plain listener is private, and the port
//! tests get is a forwarder on 127.0.0.1 that connects to Dovecot *from 127.0.0.2*:
//! the connection is no longer "local", and with `ssl = required` Dovecot hides AUTH
//! until STARTTLS and answers an early AUTH with `530 5.7.0 TLS required.` The TLS
//! session runs end to end through the forwarder (it copies bytes).
//! The implicit-TLS port needs no forwarder: TLS makes the connection secure anyway.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpSocket;

use crate::loopback::LoopbackServer;

/// The address the forwarder connects from: any loopback address but Dovecot's own.
const FORWARD_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The ports of a submission service.
#[derive(Debug)]
pub(super) struct Submission {
    /// The plain port clients use (the forwarder's), on 127.0.0.1.
    pub port: u16,
    /// Dovecot's own plain listener, reached only through the forwarder.
    pub dovecot_port: u16,
    /// The implicit-TLS port (Dovecot's), on 127.0.0.1.
    pub tls_port: u16,
    /// Running while Dovecot runs.
    pub forwarder: Option<LoopbackServer>,
}

impl Submission {
    /// Starts the forwarder on `port` (again, after a stop).
    pub fn start_forwarder(&mut self) -> Result<()> {
        if self.forwarder.is_none() {
            self.forwarder = Some(forwarder(self.port, self.dovecot_port)?);
        }
        Ok(())
    }

    /// Stops the forwarder: new connections are refused, open ones close.
    pub fn stop_forwarder(&mut self) {
        self.forwarder = None;
    }

    /// Whether the plain port, through the forwarder, greets with Dovecot's `220`.
    pub fn probe(&self) -> bool {
        let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap_or(0) > 0 && line.starts_with("220 ")
    }
}

fn forwarder(port: u16, dovecot_port: u16) -> Result<LoopbackServer> {
    // Fail here, not with every connection, where loopback has only 127.0.0.1.
    std::net::TcpListener::bind((FORWARD_FROM, 0))
        .with_context(|| format!("bind {FORWARD_FROM}: the submission forwarder needs it"))?;
    LoopbackServer::start(
        "mailsync-testenv-submission",
        port,
        move |mut client| async move {
            let Ok(mut upstream) = connect_from(FORWARD_FROM, dovecot_port).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        },
    )
}

async fn connect_from(from: Ipv4Addr, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    socket.connect(([127, 0, 0, 1], port).into()).await
}
