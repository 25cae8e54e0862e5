//! The byte stream under a session, below both `connect` (which opens it) and `wire`
//! (which reads it).

use std::fmt;

use tokio::io::{AsyncRead, AsyncWrite};

/// The byte stream under IMAP: TLS in production, plain only towards loopback.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> Stream for T {}
pub type BoxStream = Box<dyn Stream>;
