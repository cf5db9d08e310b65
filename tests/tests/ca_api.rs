//! The signing core behind Istio's CA API shape: a ztunnel-style CSR for an
//! impersonated identity goes in as an `IstioCertificateRequest`, a chain with the
//! root bundle last comes out and loads as a workload certificate.

use ambit_api::ca::{IstioCertificateRequest, IstioCertificateResponse};
use ambit_e2e::pki::{self, id};
use ambit_hbone::ca::{CertificateSigner, Validity};
use ambit_hbone::{WorkloadCertificate, csr};
use ambit_identity::SpiffeId;
use prost::Message;
use std::time::Duration;

#[test]
fn csr_round_trip_through_ca_messages() {
    let root = pki::root("cluster.local", "root");
    let inter = root
        .new_intermediate("inter", pki::valid())
        .expect("intermediate");
    let pod = id("shop", "cart");
    let req_key = csr::generate(&pod).expect("csr");
    let wire_req = IstioCertificateRequest {
        csr: req_key.csr_pem.clone(),
        validity_duration: 3600,
        metadata: None,
    }
    .with_impersonated_identity(&pod.to_string())
    .encode_to_vec();

    // CA side: decode, sign for the impersonated identity.
    let req = IstioCertificateRequest::decode(wire_req.as_slice()).expect("decode");
    let who: SpiffeId = req
        .impersonated_identity()
        .expect("impersonated")
        .parse()
        .expect("id");
    let validity = Validity::starting_now(Duration::from_secs(req.validity_duration as u64));
    let chain = inter.sign(&req.csr, &who, validity).expect("sign");
    let wire_resp = IstioCertificateResponse {
        cert_chain: chain.to_cert_chain(),
    }
    .encode_to_vec();

    // ztunnel side: decode and load; leaf + intermediate + root bundle last.
    let resp = IstioCertificateResponse::decode(wire_resp.as_slice()).expect("decode");
    assert_eq!(resp.cert_chain.len(), 3);
    assert_eq!(resp.cert_chain.last(), Some(&root.certificate_pem()));
    let cert = WorkloadCertificate::from_cert_chain(&pod, &req_key.key_pem, &resp.cert_chain)
        .expect("load");
    assert_eq!(cert.identity(), &pod);
    assert_eq!(
        cert.certified_key().cert.len(),
        2,
        "leaf + intermediate presented"
    );
    let life = cert
        .not_after()
        .duration_since(cert.not_before())
        .expect("positive");
    assert_eq!(life, Duration::from_secs(3600));

    // Asking for someone else's identity with this CSR is refused by the core.
    let other = id("shop", "payments");
    assert!(inter.sign(&req.csr, &other, validity).is_err());
}
