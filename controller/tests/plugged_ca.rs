//! `ambit-controller --ca-dir` with an Istio `cacerts` layout made by
//! OpenSSL the way Istio's `tools/certs` does (RSA root, RSA intermediate,
//! `cert-chain.pem` = intermediate + root): the controller publishes
//! `root-cert.pem` byte for byte, serves TLS under the intermediate, and
//! issues workload certificates that `openssl verify` (an independent
//! verifier) accepts against the plugged root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ambit_api::ca::{IstioCertificateRequest, IstioCertificateServiceClient};
use ambit_hbone::csr;
use ambit_identity::SpiffeId;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

mod common;
use common::{free_port, start_controller};

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo}
spec: {nodeName: node1, serviceAccountName: cart, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.2}
"#;

/// Removes the scratch directory and stops the controller, pass or fail.
struct Scratch {
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `openssl` in `dir` with `args` (split at spaces).
fn openssl(dir: &Path, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed (apt-get install openssl; .ci/deps installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem as Istio's
/// `make -f tools/certs/Makefile.selfsigned.mk` lays them out.
fn istio_cacerts(dir: &Path) {
    let ca_usage = "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign";
    std::fs::write(
        dir.join("root.cnf"),
        format!("basicConstraints=critical,CA:true\n{ca_usage}\n"),
    )
    .expect("cnf");
    std::fs::write(
        dir.join("inter.cnf"),
        format!(
            "basicConstraints=critical,CA:true,pathlen:0\n{ca_usage}\nsubjectAltName=DNS.1:istiod.istio-system.svc\n"
        ),
    )
    .expect("cnf");
    for step in [
        "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out root-key.pem",
        "req -new -key root-key.pem -subj /O=Istio/CN=Root-CA -out root.csr",
        "x509 -req -in root.csr -signkey root-key.pem -days 3650 -sha256 -extfile root.cnf -out root-cert.pem",
        "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca-key.pem",
        "req -new -key ca-key.pem -subj /O=Istio/CN=Intermediate-CA/L=cluster1 -out ca.csr",
        "x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -set_serial 7 -days 730 -sha256 -extfile inter.cnf -out ca-cert.pem",
    ] {
        openssl(dir, step);
    }
    let chain = std::fs::read_to_string(dir.join("ca-cert.pem")).expect("ca")
        + &std::fs::read_to_string(dir.join("root-cert.pem")).expect("root");
    std::fs::write(dir.join("cert-chain.pem"), chain).expect("chain");
    // The root key is not part of what istiod is given.
    std::fs::remove_file(dir.join("root-key.pem")).expect("rm");
}

#[tokio::test]
async fn istio_cacerts_layout_is_served_as_given() {
    let base = std::env::temp_dir().join(format!("ambit-plugged-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let mut scratch = Scratch {
        dir: base.clone(),
        child: None,
    };
    for d in ["config", "cacerts", "tokens"] {
        std::fs::create_dir_all(base.join(d)).expect("dir");
    }
    std::fs::write(base.join("config/world.yaml"), WORLD).expect("yaml");
    istio_cacerts(&base.join("cacerts"));
    let port = free_port();
    scratch.child = Some(start_controller(&base, port, &base.join("cacerts")));
    let deadline = Instant::now() + Duration::from_secs(20);
    let token_file = base.join("tokens/node1.token");
    while !token_file.is_file() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(&token_file).expect("token written");
    let given_root = std::fs::read_to_string(base.join("cacerts/root-cert.pem")).expect("root");
    let published = std::fs::read_to_string(base.join("tokens/root-cert.pem")).expect("published");
    assert_eq!(
        pem_ders(&published),
        pem_ders(&given_root),
        "the root is published exactly as given"
    );

    // A CSR through the real gRPC CA, over TLS verified against the plugged root.
    let cart = SpiffeId::new("cluster.local", "demo", "cart").expect("id");
    let req = csr::generate(&cart).expect("csr");
    let chain = loop {
        let attempt = async {
            let ch = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .map_err(|e| e.to_string())?
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&given_root))
                        .domain_name("localhost"),
                )
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let bearer: tonic::metadata::AsciiMetadataValue = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| "token")?;
            #[allow(clippy::result_large_err)]
            let mut client = IstioCertificateServiceClient::with_interceptor(
                ch,
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert("authorization", bearer.clone());
                    Ok(r)
                },
            );
            client
                .create_certificate(
                    IstioCertificateRequest {
                        csr: req.csr_pem.clone(),
                        validity_duration: 3600,
                        metadata: None,
                    }
                    .with_impersonated_identity(&cart.to_string()),
                )
                .await
                .map(|r| r.into_inner().cert_chain)
                .map_err(|s| s.to_string())
        };
        match attempt.await {
            Ok(chain) => break chain,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no certificate from the controller's CA: {e}"),
        }
    };
    assert_eq!(chain.len(), 3, "leaf, intermediate, root bundle: {chain:?}");
    assert_eq!(pem_ders(&chain[2]), pem_ders(&given_root));
    let dir = base.join("cacerts");
    std::fs::write(dir.join("leaf.pem"), &chain[0]).expect("leaf");
    std::fs::write(dir.join("presented.pem"), &chain[1]).expect("inter");
    let out = Command::new("openssl")
        .args("verify -CAfile root-cert.pem -untrusted presented.pem leaf.pem".split(' '))
        .current_dir(&dir)
        .output()
        .expect("openssl verify");
    assert!(
        out.status.success(),
        "openssl rejects the issued chain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The DER of each certificate in a PEM text (formatting may differ).
fn pem_ders(text: &str) -> Vec<Vec<u8>> {
    ambit_hbone::pem::certificates(text)
        .expect("pem")
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}
