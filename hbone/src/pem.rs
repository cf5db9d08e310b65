//! Small PEM helpers shared by the CA, the trust bundle and the workload certificate.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The text is not valid PEM.
    #[error("invalid PEM: {0}")]
    Invalid(String),
    /// No block of the wanted kind was found.
    #[error("no {0} found in PEM text")]
    Missing(&'static str),
}

/// All `CERTIFICATE` blocks in `text`, in order.
pub fn certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Missing("CERTIFICATE"));
    }
    Ok(certs)
}

/// The first private key in `text` (PKCS#8, SEC1 or PKCS#1).
pub fn private_key(text: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    match PrivateKeyDer::from_pem_slice(text.as_bytes()) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(PemError::Missing("PRIVATE KEY")),
        Err(e) => Err(PemError::Invalid(e.to_string())),
    }
}

/// Encodes one DER certificate as a PEM block.
pub fn encode_certificate(der: &CertificateDer<'_>) -> String {
    encode("CERTIFICATE", der.as_ref())
}

/// Encodes bytes as a PEM block with the given label (LF line endings).
pub fn encode(label: &str, der: &[u8]) -> String {
    let block = ::pem::Pem::new(label, der.to_vec());
    ::pem::encode_config(
        &block,
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_through_pemfile() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 200] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let text = encode("CERTIFICATE", &data);
            if len == 0 {
                continue;
            }
            let back = certificates(&text).unwrap();
            assert_eq!(back[0].as_ref(), data.as_slice(), "len {len}");
        }
    }

    #[test]
    fn missing_blocks_are_named() {
        assert!(matches!(
            certificates("hello"),
            Err(PemError::Missing("CERTIFICATE"))
        ));
        assert!(matches!(
            private_key(""),
            Err(PemError::Missing("PRIVATE KEY"))
        ));
    }
}
