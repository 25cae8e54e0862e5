//! TLS material for a test Dovecot: a small CA and a leaf certificate signed by it
//! (`CN=localhost`, SAN `DNS:localhost, IP:127.0.0.1`, `CA:FALSE`, EKU serverAuth).
//! rustls refuses a self-signed leaf that is its own CA, hence the two levels.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Result;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};

fn key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn serial() -> Result<Asn1Integer> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(bn.to_asn1_integer()?)
}

fn cert(cn: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> Result<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("O", "mailsync-testenv")?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_serial_number(serial()?.as_ref())?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(30)?.as_ref())?;
    match issuer {
        None => {
            b.set_issuer_name(&name)?;
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()?,
            )?;
            let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
            b.append_extension(ski)?;
            b.sign(key, MessageDigest::sha256())?;
        }
        Some((ca, ca_key)) => {
            b.set_issuer_name(ca.subject_name())?;
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_agreement()
                    .build()?,
            )?;
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
            let san = SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&b.x509v3_context(Some(ca), None))?;
            b.append_extension(san)?;
            let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(ca), None))?;
            b.append_extension(ski)?;
            let aki = AuthorityKeyIdentifier::new()
                .keyid(false)
                .build(&b.x509v3_context(Some(ca), None))?;
            b.append_extension(aki)?;
            b.sign(ca_key, MessageDigest::sha256())?;
        }
    }
    Ok(b.build())
}

/// Writes `ca.pem` (0644), `cert.pem` (leaf, 0644) and `key.pem` (0600) into `dir`.
pub fn write_tls_files(dir: &Path) -> Result<()> {
    let ca_key = key()?;
    let ca = cert("mailsync-testenv CA", &ca_key, None)?;
    let leaf_key = key()?;
    let leaf = cert("localhost", &leaf_key, Some((&ca, &ca_key)))?;
    let write = |name: &str, data: &[u8], mode: u32| -> Result<()> {
        let p = dir.join(name);
        fs::write(&p, data)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    write("ca.pem", &ca.to_pem()?, 0o644)?;
    write("cert.pem", &leaf.to_pem()?, 0o644)?;
    write("key.pem", &leaf_key.private_key_to_pem_pkcs8()?, 0o600)?;
    Ok(())
}
