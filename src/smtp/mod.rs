//! The only module that speaks SMTP: a submission connection ([`client`]: TLS or
//! STARTTLS, EHLO, AUTH XOAUTH2 / OAUTHBEARER, MAIL, RCPT, DATA), its replies
//! ([`reply`], pure) and what its refusals mean ([`error`]).

mod client;
mod error;
mod reply;

pub use client::{Connection, Envelope, connect};
pub use error::{SmtpError, Step};
pub use reply::{Enhanced, Extensions, Reply};
