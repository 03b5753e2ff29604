//! gRPC over TLS, switched on by configuration: certificates made here with
//! rcgen (a CA, a server certificate for `localhost`, a client
//! certificate), a server started with them and mutual TLS required, and
//! clients configured the way the binaries configure theirs. The server
//! answers a client that trusts its CA and presents a certificate of the
//! client CA; it refuses one without a certificate and one speaking plain
//! HTTP/2.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;
use std::time::Duration;

use allezon_core::admin::Readiness;
use allezon_core::shutdown::Shutdown;
use allezon_core::tls::{ClientTlsArgs, ServerTlsArgs};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A CA and a certificate it signed for `names`, as PEM files in `dir`
/// named after `stem`.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(dir: &Path, stem: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{stem}-ca.pem")), ca.pem()).unwrap();
        Self { ca, ca_key }
    }

    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
    }
}

async fn check(
    uri: &str,
    tls: &ClientTlsArgs,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, String> {
    let channel = allezon_core::client::channel(uri, tls.load().unwrap().as_ref())
        .map_err(|e| e.to_string())?;
    let mut client = HealthClient::new(channel);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| "no answer".to_owned())?
    .map_err(|status| status.to_string())?;
    Ok(answer.into_inner().status())
}

#[tokio::test]
async fn grpc_with_mutual_tls_serves_trusted_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let servers = Pki::new(d, "server");
    servers.issue(d, "server", &["localhost"]);
    let clients = Pki::new(d, "client");
    clients.issue(d, "client", &["gateway"]);
    // A client certificate from a CA the server does not trust.
    let strangers = Pki::new(d, "stranger");
    strangers.issue(d, "stranger", &["gateway"]);

    let server_tls = ServerTlsArgs {
        grpc_tls_cert: Some(d.join("server.pem")),
        grpc_tls_key: Some(d.join("server-key.pem")),
        grpc_tls_client_ca: Some(d.join("client-ca.pem")),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = Shutdown::new();
    tokio::spawn(allezon_core::grpc::serve(
        listener,
        tonic::service::Routes::default(),
        &[],
        Readiness::started(),
        shutdown.clone(),
        server_tls.load().unwrap(),
    ));
    let https = format!("https://localhost:{port}");

    let trusted = ClientTlsArgs {
        grpc_tls_ca: Some(d.join("server-ca.pem")),
        grpc_tls_client_cert: Some(d.join("client.pem")),
        grpc_tls_client_key: Some(d.join("client-key.pem")),
        grpc_tls_domain: None,
    };
    assert_eq!(
        check(&https, &trusted).await,
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
    // By IP address, with the certificate's name given.
    let by_ip = ClientTlsArgs {
        grpc_tls_domain: Some("localhost".into()),
        ..trusted.clone()
    };
    assert!(
        check(&format!("https://127.0.0.1:{port}"), &by_ip)
            .await
            .is_ok()
    );

    let no_certificate = ClientTlsArgs {
        grpc_tls_client_cert: None,
        grpc_tls_client_key: None,
        ..trusted.clone()
    };
    assert!(check(&https, &no_certificate).await.is_err());
    let stranger = ClientTlsArgs {
        grpc_tls_client_cert: Some(d.join("stranger.pem")),
        grpc_tls_client_key: Some(d.join("stranger-key.pem")),
        ..trusted.clone()
    };
    assert!(check(&https, &stranger).await.is_err());
    // A client that does not trust the server's CA.
    let wrong_ca = ClientTlsArgs {
        grpc_tls_ca: Some(d.join("client-ca.pem")),
        ..trusted.clone()
    };
    assert!(check(&https, &wrong_ca).await.is_err());
    // Plain HTTP/2 to a TLS port.
    let plain = ClientTlsArgs::default();
    assert!(
        check(&format!("http://localhost:{port}"), &plain)
            .await
            .is_err()
    );
    // An https endpoint without a CA is refused when the client is built.
    assert!(
        check(&https, &plain)
            .await
            .unwrap_err()
            .contains("--grpc-tls-ca")
    );
    shutdown.cancel();
}
