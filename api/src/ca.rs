//! `istio.v1.auth.IstioCertificateService` (docs/wire.md §3.3): messages and
//! gRPC stubs generated from `proto/ca.proto` with the upstream field numbers,
//! so Istio's ztunnel and Ambit's CA interoperate, plus the metadata helpers.

/// gRPC path of the one method of the CA service.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Metadata key naming the identity a shared-mode ztunnel asks for on a pod's behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The gRPC client of the CA service.
pub use crate::xds::proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
/// The gRPC server side of the CA service.
pub use crate::xds::proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
pub use crate::xds::proto::ca::{IstioCertificateRequest, IstioCertificateResponse};

impl IstioCertificateRequest {
    /// The identity named by `metadata.ImpersonatedIdentity`, if any.
    pub fn impersonated_identity(&self) -> Option<&str> {
        let fields = &self.metadata.as_ref()?.fields;
        match fields.get(IMPERSONATED_IDENTITY)?.kind.as_ref()? {
            // Istio reads it with GetStringValue: "" or another kind is "absent".
            prost_types::value::Kind::StringValue(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// Sets `metadata.ImpersonatedIdentity`.
    pub fn with_impersonated_identity(mut self, id: &str) -> Self {
        let value = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
        };
        self.metadata
            .get_or_insert_with(Default::default)
            .fields
            .insert(IMPERSONATED_IDENTITY.to_string(), value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_match_istio() {
        let req = IstioCertificateRequest {
            csr: "C".into(),
            validity_duration: 86400,
            metadata: None,
        }
        .with_impersonated_identity("spiffe://cluster.local/ns/a/sa/b");
        let bytes = req.encode_to_vec();
        // csr: field 1, wire type 2 -> tag byte 0x0a; validity: field 3 varint -> 0x18;
        // metadata: field 4, wire type 2 -> 0x22. There is no field 2.
        assert_eq!(&bytes[..3], &[0x0a, 0x01, b'C']);
        assert_eq!(bytes[3], 0x18);
        assert!(bytes.contains(&0x22));
        let back = IstioCertificateRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            back.impersonated_identity(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );

        let resp = IstioCertificateResponse {
            cert_chain: vec!["leaf".into(), "root".into()],
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(
            IstioCertificateResponse::decode(bytes.as_slice()).unwrap(),
            resp
        );
    }
}
