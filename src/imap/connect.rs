//! Opening a connection: TCP, TLS (implicit or STARTTLS, certificates always
//! verified), the greeting, and SASL XOAUTH2 / OAUTHBEARER.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::BufReader;

use super::error::{AuthFailure, ImapError};
use super::session::{Capabilities, SaslEnd, Session};
use super::stream::BoxStream;
use super::wire::Wire;
use crate::config::{ImapEndpoint, Tls};
use crate::secret::Secret;
use crate::server_text::Scrubber;
use crate::tls::{HandshakeError, OpenError, Peer, TlsInfo, Trust, certificate_info};

/// A connection that has not logged in yet.
pub struct Client {
    /// The session before authentication: greeting read, capabilities known.
    session: Session,
    tls: Option<TlsInfo>,
    port: u16,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.session.host())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Connects and reads the greeting; for STARTTLS, upgrades before anything else.
pub async fn connect(
    endpoint: &ImapEndpoint,
    command_timeout: Duration,
) -> Result<Client, ImapError> {
    // With a ca_file, try it alone first: loading the system's CA bundle costs tens
    // of milliseconds of CPU, more than the rest of a no-op sync. Only a certificate
    // from another issuer makes it worth loading, as ca_file adds to the system store.
    // Once that failed, this process goes to the system store directly.
    use std::sync::{Mutex, OnceLock};
    static NEEDS_SYSTEM: OnceLock<Mutex<Vec<std::path::PathBuf>>> = OnceLock::new();
    let needs_system = NEEDS_SYSTEM.get_or_init(|| Mutex::new(Vec::new()));
    let first = match &endpoint.ca_file {
        Some(path) if !needs_system.lock().is_ok_and(|n| n.contains(path)) => Trust::CaFileOnly,
        _ => Trust::System,
    };
    match connect_trusting(endpoint, command_timeout, first).await {
        Err(Attempt::OtherIssuer(_)) if first == Trust::CaFileOnly => {
            let client = connect_trusting(endpoint, command_timeout, Trust::System)
                .await
                .map_err(Attempt::into_error)?;
            if let (Ok(mut n), Some(path)) = (needs_system.lock(), &endpoint.ca_file) {
                n.push(path.clone());
            }
            Ok(client)
        }
        other => other.map_err(Attempt::into_error),
    }
}

/// A failed connection attempt; `OtherIssuer` may succeed with the system store.
enum Attempt {
    Failed(ImapError),
    OtherIssuer(ImapError),
}

impl Attempt {
    fn into_error(self) -> ImapError {
        match self {
            Attempt::Failed(e) | Attempt::OtherIssuer(e) => e,
        }
    }
}

impl From<ImapError> for Attempt {
    fn from(e: ImapError) -> Attempt {
        Attempt::Failed(e)
    }
}

impl From<HandshakeError> for Attempt {
    fn from(e: HandshakeError) -> Attempt {
        match e {
            HandshakeError::Failed(e) => Attempt::Failed(e.into()),
            HandshakeError::OtherIssuer(e) => Attempt::OtherIssuer(e.into()),
        }
    }
}

/// Who the handshake is with, as [`crate::tls`] wants it.
fn peer(endpoint: &ImapEndpoint) -> Peer<'_> {
    Peer {
        host: &endpoint.host,
        port: endpoint.port,
        ca_file: endpoint.ca_file.as_deref(),
        plain_port_hint: "tls = \"starttls\" (port 143)",
    }
}

async fn connect_trusting(
    endpoint: &ImapEndpoint,
    command_timeout: Duration,
    trust: Trust,
) -> Result<Client, Attempt> {
    let host = endpoint.host.clone();
    let port = endpoint.port;
    let tcp = crate::tls::open(&host, port, endpoint.tls == Tls::Plain, command_timeout)
        .await
        .map_err(|e| match e {
            OpenError::Timeout => ImapError::Timeout {
                command: format!("connect to {host}:{port}"),
                after: command_timeout,
            },
            OpenError::Connect(source) => ImapError::Connect {
                host: host.clone(),
                port,
                source,
            },
            OpenError::PlainNotLoopback(addr) => ImapError::PlainNotLoopback {
                host: host.clone(),
                addr,
            },
        })?;
    // OpenSSL reads a TLS record's 5-byte header, then its body, each with its own
    // read(); against Dovecot's small records that was ~530,000 recvfrom calls for
    // 1.1 GB. A buffer under the TLS layer turns them into one call per 64 KiB.
    let tcp = BufReader::with_capacity(READ_BUFFER, tcp);

    let mut tls = None;
    let stream: BoxStream = match endpoint.tls {
        Tls::Implicit => {
            let stream = crate::tls::handshake(peer(endpoint), tcp, command_timeout, trust).await?;
            tls = certificate_info(stream.ssl());
            Box::new(stream)
        }
        Tls::Plain => Box::new(tcp),
        Tls::Starttls => {
            let wire = Wire::new(Box::new(tcp), command_timeout);
            let mut plain = Session::new(wire, host.clone(), command_timeout);
            plain.read_greeting().await?;
            plain.refresh_capabilities().await?;
            if !plain.capabilities().has("STARTTLS") {
                return Err(ImapError::NoStartTls { host }.into());
            }
            plain
                .exec("STARTTLS", |_| Ok(()))
                .await
                .map_err(|e| ImapError::Protocol {
                    command: "STARTTLS".into(),
                    detail: e.to_string(),
                })?;
            // Bytes the server sent after its OK would be read as if they came over
            // TLS: a known injection (CVE-2011-0411 and kin). Refuse them.
            let stream = plain
                .into_wire()
                .into_stream()
                .ok_or_else(|| ImapError::Protocol {
                    command: "STARTTLS".into(),
                    detail: "the server sent data after STARTTLS's OK, before TLS; refusing it"
                        .into(),
                })?;
            let stream =
                crate::tls::handshake(peer(endpoint), stream, command_timeout, trust).await?;
            tls = certificate_info(stream.ssl());
            Box::new(stream)
        }
    };

    let mut session = Session::new(Wire::new(stream, command_timeout), host, command_timeout);
    let greeting_caps = if endpoint.tls == Tls::Starttls {
        None // the pre-TLS greeting is not to be trusted; ask again below
    } else {
        session.read_greeting().await?
    };
    match greeting_caps {
        Some(caps) => session.set_capabilities_from(caps),
        None => session.refresh_capabilities().await?,
    }
    tracing::debug!(host = %session.host(), port, capabilities = %session.capabilities(), "connected");
    Ok(Client { session, tls, port })
}

/// Bytes read from the socket at a time at most.
const READ_BUFFER: usize = 64 * 1024;

impl Client {
    pub fn capabilities(&self) -> &Capabilities {
        self.session.capabilities()
    }

    /// The server certificate's details (none over plain text).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Logs in with XOAUTH2 (SASL-IR when offered), or OAUTHBEARER when XOAUTH2 is not
    /// offered. Never logs the token, and takes it out of anything the server says
    /// from then on.
    pub async fn authenticate(self, user: &str, token: &Secret) -> Result<Session, ImapError> {
        let mut session = self.authenticate_only(user, token).await?;
        session.refresh_capabilities().await?;
        Ok(session)
    }

    /// [`Client::authenticate`] for a sync, which wants QRESYNC on (RFC 7162 wants
    /// ENABLE before the first SELECT): where the server lists ENABLE before login,
    /// `ENABLE QRESYNC` goes out with the CAPABILITY that follows the login, in one
    /// round trip (a server without QRESYNC enables nothing, RFC 5161). Elsewhere
    /// CAPABILITY, then ENABLE if QRESYNC is offered.
    pub async fn authenticate_for_sync(
        self,
        user: &str,
        token: &Secret,
    ) -> Result<Session, ImapError> {
        let enable_early = self.capabilities().has("ENABLE");
        let mut session = self.authenticate_only(user, token).await?;
        if enable_early {
            session.capabilities_and_qresync().await?;
        } else {
            session.refresh_capabilities().await?;
            session.enable_qresync().await?;
        }
        Ok(session)
    }

    /// The SASL exchange alone; the session's capabilities are the pre-login ones.
    async fn authenticate_only(self, user: &str, token: &Secret) -> Result<Session, ImapError> {
        let Client {
            mut session, port, ..
        } = self;
        let host = session.host().to_owned();
        let caps = session.capabilities();
        let (mechanism, payload) = if caps.has("AUTH=XOAUTH2") {
            ("XOAUTH2", crate::sasl::xoauth2(user, token))
        } else if caps.has("AUTH=OAUTHBEARER") {
            (
                "OAUTHBEARER",
                crate::sasl::oauthbearer(user, &host, port, token),
            )
        } else {
            return Err(ImapError::NoOAuthMechanism {
                host,
                offered: caps.auth_mechanisms().join(" "),
            });
        };
        if caps.has("LOGINDISABLED") && !caps.has(&format!("AUTH={mechanism}")) {
            return Err(ImapError::NoOAuthMechanism {
                host,
                offered: caps.auth_mechanisms().join(" "),
            });
        }
        let sasl_ir = caps.has("SASL-IR");
        let encoded = Secret::new(base64::engine::general_purpose::STANDARD.encode(&payload));
        drop(payload);
        // A server may echo what it was sent: the token and the SASL string are taken
        // out of all it says from now on.
        session.set_scrubber(Scrubber::new(vec![token.clone(), encoded.clone()]));
        tracing::debug!(%host, mechanism, sasl_ir, "authenticating");
        match session.authenticate(mechanism, &encoded, sasl_ir).await? {
            SaslEnd::Ok => Ok(session),
            SaslEnd::Refused { text, challenge } => {
                // A busy or throttling server (Exchange: `NO Request is throttled.
                // Suggested Backoff Time: N milliseconds`) refused the login, not the
                // token: another token now would only be throttled again.
                if text.to_ascii_uppercase().contains("[UNAVAILABLE]")
                    || crate::retry::throttle_hint(&text).is_some()
                {
                    return Err(ImapError::Unavailable(text));
                }
                Err(ImapError::AuthFailed(AuthFailure {
                    mechanism,
                    server_text: text,
                    challenge,
                }))
            }
        }
    }
}
