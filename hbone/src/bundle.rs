//! Trust bundles: the set of roots a workload trusts for data-plane peers.
//!
//! A bundle holds more than one root so a CA root can be rotated with overlap:
//! peers chained to the old root and to the new root are both accepted while
//! both are in the bundle.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::pem::{self, PemError};

/// A set of trusted root certificates, cheap to clone.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Arc<[CertificateDer<'static>]>,
    anchors: Arc<[TrustAnchor<'static>]>,
}

/// Why a trust bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The PEM text could not be read.
    #[error("trust bundle: {0}")]
    Pem(#[from] PemError),
    /// A certificate is not usable as a trust anchor.
    #[error("trust bundle: root #{index} is not a usable trust anchor: {reason}")]
    BadAnchor {
        /// Position of the root in the bundle.
        index: usize,
        /// What webpki said.
        reason: String,
    },
    /// The bundle holds no root at all.
    #[error("trust bundle holds no root certificate")]
    Empty,
}

impl TrustBundle {
    /// Builds a bundle from DER roots.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadAnchor {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustBundle {
            roots: roots.into(),
            anchors: anchors.into(),
        })
    }

    /// Builds a bundle from one PEM text holding any number of concatenated roots,
    /// the shape of the last `cert_chain` entry of an Istio CA response.
    pub fn from_pem(text: &str) -> Result<Self, BundleError> {
        Self::new(pem::certificates(text)?)
    }

    /// Adds the roots of `other` that this bundle does not hold yet.
    pub fn merged(&self, other: &TrustBundle) -> TrustBundle {
        let mut roots: Vec<_> = self.roots.to_vec();
        for r in other.roots.iter() {
            if !roots.contains(r) {
                roots.push(r.clone());
            }
        }
        // Both inputs were valid, so the merge is too.
        let anchors = roots
            .iter()
            .filter_map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect::<Vec<_>>();
        TrustBundle {
            roots: roots.into(),
            anchors: anchors.into(),
        }
    }

    /// The roots as DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// All roots as one concatenated PEM text.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| pem::encode_certificate(r))
            .collect()
    }
}
