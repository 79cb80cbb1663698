//! PEM and DER input: certificates, chains and private keys read from files or the wire.
//!
//! Everything here is outside data, so every failure is a typed [`PemError`] that says what was
//! expected and what was found; nothing panics.

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const CERTIFICATE: &str = "CERTIFICATE";
const PRIVATE_KEY: &str = "PRIVATE KEY";

/// Why PEM input was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    #[error("not valid PEM: {0}")]
    Malformed(#[from] pem::PemError),
    #[error("no {expected} block found in the PEM input")]
    Missing { expected: &'static str },
    #[error("expected a {expected} PEM block, found {found:?}")]
    UnexpectedTag {
        expected: &'static str,
        found: String,
    },
    #[error("expected exactly one {expected} PEM block, found {count}")]
    TooMany {
        expected: &'static str,
        count: usize,
    },
    #[error("certificate #{index} is not valid X.509 DER: {reason}")]
    BadCertificate { index: usize, reason: String },
}

/// Reads every `CERTIFICATE` block, in order; any other block is an error, since a stray key in a
/// certificate file is a mistake worth hearing about.
pub fn parse_certificates(input: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let blocks = pem::parse_many(input)?;
    if blocks.is_empty() {
        return Err(PemError::Missing {
            expected: CERTIFICATE,
        });
    }
    let mut certs = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.into_iter().enumerate() {
        if block.tag() != CERTIFICATE {
            return Err(PemError::UnexpectedTag {
                expected: CERTIFICATE,
                found: block.tag().to_owned(),
            });
        }
        let der = block.into_contents();
        check_certificate_der(&der).map_err(|reason| PemError::BadCertificate { index, reason })?;
        certs.push(CertificateDer::from(der));
    }
    Ok(certs)
}

/// Reads exactly one PKCS#8 `PRIVATE KEY` block.
pub fn parse_private_key(input: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    let blocks = pem::parse_many(input)?;
    match blocks.len() {
        0 => Err(PemError::Missing {
            expected: PRIVATE_KEY,
        }),
        1 => {
            let block = blocks.into_iter().next().ok_or(PemError::Missing {
                expected: PRIVATE_KEY,
            })?;
            if block.tag() != PRIVATE_KEY {
                return Err(PemError::UnexpectedTag {
                    expected: PRIVATE_KEY,
                    found: block.tag().to_owned(),
                });
            }
            Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                block.into_contents(),
            )))
        }
        count => Err(PemError::TooMany {
            expected: PRIVATE_KEY,
            count,
        }),
    }
}

/// Encodes DER certificates as PEM, one block each.
pub fn encode_certificates<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs
        .into_iter()
        .map(|der| pem::encode(&pem::Pem::new(CERTIFICATE, der.as_ref().to_vec())))
        .collect()
}

/// Encodes a PKCS#8 private key as PEM.
pub fn encode_private_key(key: &PrivateKeyDer<'_>) -> String {
    pem::encode(&pem::Pem::new(PRIVATE_KEY, key.secret_der().to_vec()))
}

/// Checks that bytes are one whole X.509 certificate, nothing more.
pub(crate) fn check_certificate_der(der: &[u8]) -> Result<(), String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(()),
        Ok((rest, _)) => Err(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_garbage_and_wrong_blocks() {
        assert!(matches!(
            parse_certificates(b"hello"),
            Err(PemError::Missing { .. })
        ));
        let key_block = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]));
        assert!(matches!(
            parse_certificates(key_block.as_bytes()),
            Err(PemError::UnexpectedTag { .. })
        ));
        let bad_cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x03, 1, 2, 3]));
        let err = parse_certificates(bad_cert.as_bytes()).expect_err("garbage DER");
        assert!(err.to_string().contains("certificate #0"), "{err}");
        assert!(matches!(
            parse_private_key(bad_cert.as_bytes()),
            Err(PemError::UnexpectedTag { .. })
        ));
        let two = format!("{key_block}{key_block}");
        assert!(matches!(
            parse_private_key(two.as_bytes()),
            Err(PemError::TooMany { count: 2, .. })
        ));
    }
}
