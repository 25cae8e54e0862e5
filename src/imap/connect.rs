//! Opening a connection: TCP, TLS (implicit or STARTTLS, certificates always
//! verified), the greeting, and SASL XOAUTH2 / OAUTHBEARER.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslOptions, SslVerifyMode, SslVersion};
use openssl::x509::verify::X509CheckFlags;
use openssl::x509::{X509, X509VerifyResult};
use tokio::io::BufReader;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::error::{AuthFailure, ImapError};
use super::session::{Capabilities, SaslEnd, Session};
use super::stream::BoxStream;
use super::text::Scrubber;
use super::wire::Wire;
use crate::config::{ImapEndpoint, Tls};
use crate::secret::Secret;

/// What the server's certificate says, for `mailsync test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    pub days_left: i32,
}

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

/// Which certificate authorities a connection trusts: `ca_file` alone, or the
/// system's store (plus `ca_file`, if set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Trust {
    CaFileOnly,
    System,
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

async fn connect_trusting(
    endpoint: &ImapEndpoint,
    command_timeout: Duration,
    trust: Trust,
) -> Result<Client, Attempt> {
    let host = endpoint.host.clone();
    let port = endpoint.port;
    let tcp = timeout(command_timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| ImapError::Timeout {
            command: format!("connect to {host}:{port}"),
            after: command_timeout,
        })?
        .map_err(|source| ImapError::Connect {
            host: host.clone(),
            port,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    // Plain text only towards loopback: the config checks the name, but a name (say
    // `mail.localhost`) may resolve anywhere; what counts is the address connected to.
    if endpoint.tls == Tls::Plain
        && let Ok(peer) = tcp.peer_addr()
        && !peer.ip().is_loopback()
    {
        return Err(ImapError::PlainNotLoopback {
            host,
            addr: peer.ip(),
        }
        .into());
    }
    // OpenSSL reads a TLS record's 5-byte header, then its body, each with its own
    // read(); against Dovecot's small records that was ~530,000 recvfrom calls for
    // 1.1 GB. A buffer under the TLS layer turns them into one call per 64 KiB.
    let tcp = BufReader::with_capacity(READ_BUFFER, tcp);

    let mut tls = None;
    let stream: BoxStream = match endpoint.tls {
        Tls::Implicit => {
            let stream = handshake(endpoint, tcp, command_timeout, trust).await?;
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
            let stream = handshake(endpoint, stream, command_timeout, trust).await?;
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

/// Subject, issuer and expiry of the server's certificate (already verified).
fn certificate_info(ssl: &openssl::ssl::SslRef) -> Option<TlsInfo> {
    let cert = ssl.peer_certificate()?;
    let name = |n: &openssl::x509::X509NameRef| {
        n.entries()
            .map(|e| {
                let key = e.object().nid().short_name().unwrap_or("?");
                let value = e.data().to_string().unwrap_or_default();
                format!("{key}={value}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let now = openssl::asn1::Asn1Time::days_from_now(0).ok()?;
    let days_left = now.diff(cert.not_after()).map(|d| d.days).unwrap_or(0);
    Some(TlsInfo {
        subject: name(cert.subject_name()),
        issuer: name(cert.issuer_name()),
        not_after: cert.not_after().to_string(),
        days_left,
    })
}

/// Bytes read from the socket at a time at most.
const READ_BUFFER: usize = 64 * 1024;

/// The TLS handshake, verifying the chain against `trust` and the name against the
/// configured host (SNI sent for names, not for IP addresses), as OpenSSL's own
/// `SslConnector` does.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    endpoint: &ImapEndpoint,
    tcp: S,
    command_timeout: Duration,
    trust: Trust,
) -> Result<tokio_openssl::SslStream<S>, Attempt> {
    let ca_file = endpoint.ca_file.as_deref();
    let tls_err = |detail: String| ImapError::Tls {
        host: endpoint.host.clone(),
        port: endpoint.port,
        hint: tls_hint(&detail, ca_file),
        detail,
    };
    let context = ssl_context(ca_file, trust).map_err(|e| e.for_endpoint(endpoint))?;
    let setup = |e: openssl::error::ErrorStack| tls_err(format!("cannot set up TLS: {e}"));
    let mut ssl = Ssl::new(&context).map_err(setup)?;
    let host = endpoint.host.as_str();
    let param = ssl.param_mut();
    param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => param.set_ip(ip).map_err(setup)?,
        Err(_) => {
            param.set_host(host).map_err(setup)?;
            ssl.set_hostname(host).map_err(setup)?;
        }
    }
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(setup)?;
    match timeout(command_timeout, std::pin::Pin::new(&mut stream).connect()).await {
        Err(_) => Err(tls_err(format!(
            "no TLS handshake within {}s",
            command_timeout.as_secs()
        ))
        .into()),
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => {
            let verify = stream.ssl().verify_result();
            if verify == X509VerifyResult::OK {
                return Err(tls_err(e.to_string()).into());
            }
            let error = tls_err(format!(
                "certificate verify failed: {}",
                verify.error_string()
            ));
            // 18, 19, 20: self-signed, or an issuer ca_file does not hold.
            if trust == Trust::CaFileOnly && matches!(verify.as_raw(), 18..=20) {
                Err(Attempt::OtherIssuer(error))
            } else {
                Err(Attempt::Failed(error))
            }
        }
    }
}

/// The bytes of `ca_file` (none without one): what the TLS configurations are cached by.
fn read_ca_file(ca_file: Option<&Path>) -> Result<Vec<u8>, ImapError> {
    match ca_file {
        Some(path) => std::fs::read(path).map_err(|e| ImapError::CaFile {
            path: path.to_owned(),
            detail: e.to_string(),
        }),
        None => Ok(Vec::new()),
    }
}

/// The OpenSSL client context for a CA set, built once per process and reused: the
/// daemon connects again and again, and loading the system store is the costly part.
/// Certificates are always verified; TLS 1.2 at least.
fn ssl_context(ca_file: Option<&Path>, trust: Trust) -> Result<SslContext, ImapError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Cache = Mutex<HashMap<(Vec<u8>, Trust), SslContext>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (read_ca_file(ca_file)?, trust);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(context) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(context);
    }
    let setup = |e: openssl::error::ErrorStack| ImapError::Tls {
        host: String::new(),
        port: 0,
        detail: format!("cannot set up TLS: {e}"),
        hint: String::new(),
    };
    let mut builder = SslContext::builder(SslMethod::tls_client()).map_err(setup)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(setup)?;
    builder.set_options(SslOptions::NO_COMPRESSION);
    builder.set_verify(SslVerifyMode::PEER);
    if trust == Trust::System {
        builder.set_default_verify_paths().map_err(setup)?;
    }
    if let Some(path) = ca_file {
        let certs = X509::stack_from_pem(&key.0).map_err(|e| ImapError::CaFile {
            path: path.to_owned(),
            detail: format!("not a PEM certificate ({e})"),
        })?;
        if certs.is_empty() {
            return Err(ImapError::CaFile {
                path: path.to_owned(),
                detail: "not a PEM certificate (no -----BEGIN CERTIFICATE----- block)".into(),
            });
        }
        for cert in certs {
            builder.cert_store_mut().add_cert(cert).map_err(setup)?;
        }
    }
    let context = builder.build();
    if let Ok(mut c) = cache.lock() {
        c.insert(key, context.clone());
    }
    Ok(context)
}

/// The native-tls configuration for the OAuth HTTP client (reqwest takes no other),
/// trusting the system's CAs and `ca_file`, built once per CA file content and
/// reused: building one loads the system's CA bundle (twice, in native-tls), tens of
/// milliseconds of CPU with OpenSSL 3. Certificates are always verified.
pub fn tls_connector(ca_file: Option<&Path>) -> Result<native_tls::TlsConnector, ImapError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, native_tls::TlsConnector>>> = OnceLock::new();
    let pem = read_ca_file(ca_file)?;
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(c) = cache.lock()
        && let Some(connector) = c.get(&pem)
    {
        return Ok(connector.clone());
    }
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = ca_file {
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| ImapError::CaFile {
            path: path.to_owned(),
            detail: format!("not a PEM certificate ({e})"),
        })?;
        builder.add_root_certificate(cert);
    }
    let connector = builder.build().map_err(|e| ImapError::Tls {
        host: String::new(),
        port: 0,
        detail: format!("cannot set up TLS: {e}"),
        hint: String::new(),
    })?;
    if let Ok(mut c) = cache.lock() {
        c.insert(pem, connector.clone());
    }
    Ok(connector)
}

impl ImapError {
    /// Names the endpoint in a TLS set-up error made without one.
    fn for_endpoint(self, endpoint: &ImapEndpoint) -> ImapError {
        match self {
            ImapError::Tls { detail, hint, .. } => ImapError::Tls {
                host: endpoint.host.clone(),
                port: endpoint.port,
                detail,
                hint,
            },
            other => other,
        }
    }
}

fn tls_hint(detail: &str, ca_file: Option<&Path>) -> String {
    let d = detail.to_ascii_lowercase();
    if d.contains("certificate") || d.contains("verify") {
        match ca_file {
            Some(p) => format!(
                "; the server's certificate is not signed by a CA in ca_file {} (nor the system store): check that ca_file is the CA that issued the server's certificate",
                p.display()
            ),
            None => "; the server's certificate is not trusted by the system store: set ca_file to the CA that issued it, or fix the server's certificate".into(),
        }
    } else if d.contains("wrong version") || d.contains("packet length") {
        "; the port does not speak TLS: try tls = \"starttls\" (port 143)".into()
    } else {
        String::new()
    }
}

/// The XOAUTH2 initial response (Google's and Microsoft's format).
fn xoauth2_payload(user: &str, token: &Secret) -> Vec<u8> {
    format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose()).into_bytes()
}

/// The OAUTHBEARER initial response (RFC 7628).
fn oauthbearer_payload(user: &str, host: &str, port: u16, token: &Secret) -> Vec<u8> {
    let user = user.replace('=', "=3D").replace(',', "=2C");
    format!(
        "n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {}\x01\x01",
        token.expose()
    )
    .into_bytes()
}

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
            ("XOAUTH2", xoauth2_payload(user, token))
        } else if caps.has("AUTH=OAUTHBEARER") {
            ("OAUTHBEARER", oauthbearer_payload(user, &host, port, token))
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
