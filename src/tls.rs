//! TLS for the connections mailsync opens (IMAP, SMTP submission, the identity
//! provider): certificates always verified against the system store and `ca_file`, TLS
//! 1.2 at least, the configurations built once per process. Below `imap` and `smtp`,
//! which turn a [`TlsError`] into their own errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::ssl::{Ssl, SslContext, SslMethod, SslOptions, SslVerifyMode, SslVersion};
use openssl::x509::verify::X509CheckFlags;
use openssl::x509::{X509, X509VerifyResult};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// What the server's certificate says, for `mailsync test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    pub days_left: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake with {host}:{port} failed: {detail}{hint}")]
    Handshake {
        host: String,
        port: u16,
        detail: String,
        /// Starts with "; " when there is one.
        hint: String,
    },
    #[error("cannot read ca_file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
}

/// Why a TCP connection was not opened.
#[derive(Debug)]
pub enum OpenError {
    Timeout,
    Connect(std::io::Error),
    /// Plain text was asked for towards an address that is not this machine.
    PlainNotLoopback(std::net::IpAddr),
}

/// Opens a TCP connection to `host:port` within `within`, without Nagle's delay.
/// `plain`: nothing will encrypt it, so it must reach a loopback address: the config
/// checks the name, but a name (say `mail.localhost`) may resolve anywhere, and what
/// counts is the address connected to.
pub async fn open(
    host: &str,
    port: u16,
    plain: bool,
    within: Duration,
) -> Result<TcpStream, OpenError> {
    let tcp = timeout(within, TcpStream::connect((host, port)))
        .await
        .map_err(|_| OpenError::Timeout)?
        .map_err(OpenError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if plain
        && let Ok(peer) = tcp.peer_addr()
        && !peer.ip().is_loopback()
    {
        return Err(OpenError::PlainNotLoopback(peer.ip()));
    }
    Ok(tcp)
}

/// Who a handshake is with, and what to suggest when the port speaks no TLS.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    pub host: &'a str,
    pub port: u16,
    pub ca_file: Option<&'a Path>,
    /// The other way to reach the service, e.g. `tls = "starttls" (port 143)`.
    pub plain_port_hint: &'a str,
}

/// Which certificate authorities a connection trusts: `ca_file` alone, or the
/// system's store (plus `ca_file`, if set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trust {
    CaFileOnly,
    System,
}

/// A failed handshake; `OtherIssuer` may succeed with the system store.
#[derive(Debug)]
pub enum HandshakeError {
    Failed(TlsError),
    OtherIssuer(TlsError),
}

impl HandshakeError {
    pub fn into_error(self) -> TlsError {
        match self {
            HandshakeError::Failed(e) | HandshakeError::OtherIssuer(e) => e,
        }
    }
}

/// The TLS handshake, verifying the chain against `trust` and the name against the
/// configured host (SNI sent for names, not for IP addresses), as OpenSSL's own
/// `SslConnector` does.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    peer: Peer<'_>,
    tcp: S,
    within: Duration,
    trust: Trust,
) -> Result<tokio_openssl::SslStream<S>, HandshakeError> {
    let tls_err = |detail: String| TlsError::Handshake {
        host: peer.host.to_owned(),
        port: peer.port,
        hint: tls_hint(&detail, peer),
        detail,
    };
    let context =
        ssl_context(peer.ca_file, trust).map_err(|e| HandshakeError::Failed(e.for_peer(peer)))?;
    let setup = |e: openssl::error::ErrorStack| {
        HandshakeError::Failed(tls_err(format!("cannot set up TLS: {e}")))
    };
    let mut ssl = Ssl::new(&context).map_err(setup)?;
    let param = ssl.param_mut();
    param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
    match peer.host.parse::<std::net::IpAddr>() {
        Ok(ip) => param.set_ip(ip).map_err(setup)?,
        Err(_) => {
            param.set_host(peer.host).map_err(setup)?;
            ssl.set_hostname(peer.host).map_err(setup)?;
        }
    }
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(setup)?;
    match timeout(within, std::pin::Pin::new(&mut stream).connect()).await {
        Err(_) => Err(HandshakeError::Failed(tls_err(format!(
            "no TLS handshake within {}s",
            within.as_secs()
        )))),
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => {
            let verify = stream.ssl().verify_result();
            if verify == X509VerifyResult::OK {
                return Err(HandshakeError::Failed(tls_err(e.to_string())));
            }
            let error = tls_err(format!(
                "certificate verify failed: {}",
                verify.error_string()
            ));
            // 18, 19, 20: self-signed, or an issuer ca_file does not hold.
            if trust == Trust::CaFileOnly && matches!(verify.as_raw(), 18..=20) {
                Err(HandshakeError::OtherIssuer(error))
            } else {
                Err(HandshakeError::Failed(error))
            }
        }
    }
}

/// Subject, issuer and expiry of the server's certificate (already verified).
pub fn certificate_info(ssl: &openssl::ssl::SslRef) -> Option<TlsInfo> {
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

/// The bytes of `ca_file` (none without one): what the TLS configurations are cached by.
fn read_ca_file(ca_file: Option<&Path>) -> Result<Vec<u8>, TlsError> {
    match ca_file {
        Some(path) => std::fs::read(path).map_err(|e| TlsError::CaFile {
            path: path.to_owned(),
            detail: e.to_string(),
        }),
        None => Ok(Vec::new()),
    }
}

fn setup_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Handshake {
        host: String::new(),
        port: 0,
        detail: format!("cannot set up TLS: {e}"),
        hint: String::new(),
    }
}

/// The OpenSSL client context for a CA set, built once per process and reused: the
/// daemon connects again and again, and loading the system store is the costly part.
/// Certificates are always verified; TLS 1.2 at least.
fn ssl_context(ca_file: Option<&Path>, trust: Trust) -> Result<SslContext, TlsError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Cache = Mutex<HashMap<(Vec<u8>, Trust), SslContext>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (read_ca_file(ca_file)?, trust);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(context) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(context);
    }
    let mut builder = SslContext::builder(SslMethod::tls_client()).map_err(setup_error)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(setup_error)?;
    builder.set_options(SslOptions::NO_COMPRESSION);
    builder.set_verify(SslVerifyMode::PEER);
    if trust == Trust::System {
        builder.set_default_verify_paths().map_err(setup_error)?;
    }
    if let Some(path) = ca_file {
        let certs = X509::stack_from_pem(&key.0).map_err(|e| TlsError::CaFile {
            path: path.to_owned(),
            detail: format!("not a PEM certificate ({e})"),
        })?;
        if certs.is_empty() {
            return Err(TlsError::CaFile {
                path: path.to_owned(),
                detail: "not a PEM certificate (no -----BEGIN CERTIFICATE----- block)".into(),
            });
        }
        for cert in certs {
            builder
                .cert_store_mut()
                .add_cert(cert)
                .map_err(setup_error)?;
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
pub fn tls_connector(ca_file: Option<&Path>) -> Result<native_tls::TlsConnector, TlsError> {
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
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| TlsError::CaFile {
            path: path.to_owned(),
            detail: format!("not a PEM certificate ({e})"),
        })?;
        builder.add_root_certificate(cert);
    }
    let connector = builder.build().map_err(setup_error)?;
    if let Ok(mut c) = cache.lock() {
        c.insert(pem, connector.clone());
    }
    Ok(connector)
}

impl TlsError {
    /// Names the peer in a set-up error made without one.
    fn for_peer(self, peer: Peer<'_>) -> TlsError {
        match self {
            TlsError::Handshake { detail, hint, .. } => TlsError::Handshake {
                host: peer.host.to_owned(),
                port: peer.port,
                detail,
                hint,
            },
            other => other,
        }
    }
}

fn tls_hint(detail: &str, peer: Peer<'_>) -> String {
    let d = detail.to_ascii_lowercase();
    if d.contains("certificate") || d.contains("verify") {
        match peer.ca_file {
            Some(p) => format!(
                "; the server's certificate is not signed by a CA in ca_file {} (nor the system store): check that ca_file is the CA that issued the server's certificate",
                p.display()
            ),
            None => "; the server's certificate is not trusted by the system store: set ca_file to the CA that issued it, or fix the server's certificate".into(),
        }
    } else if d.contains("wrong version") || d.contains("packet length") {
        format!(
            "; the port does not speak TLS: try {}",
            peer.plain_port_hint
        )
    } else {
        String::new()
    }
}
