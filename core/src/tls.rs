//! TLS for our gRPC traffic, switched on by configuration.
//!
//! Servers take a certificate and key (`--grpc-tls-cert`, `--grpc-tls-key`)
//! and, for mutual TLS, the CA that must have signed every client's
//! certificate (`--grpc-tls-client-ca`). Clients take the CA that signed the
//! servers' certificates (`--grpc-tls-ca`) and use it for `https://`
//! endpoints, plus their own certificate and key when the servers ask for
//! one. Files are PEM. Without any of these, traffic is plain HTTP/2, as
//! inside a trusted network or a service mesh that encrypts for us.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A gRPC server's TLS settings.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain the gRPC server presents; with
    /// `--grpc-tls-key`, turns TLS on.
    #[arg(long, env = "ALLEZON_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of `--grpc-tls-cert`.
    #[arg(long, env = "ALLEZON_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate signed by
    /// one of them (mutual TLS).
    #[arg(long, env = "ALLEZON_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The server's TLS configuration, `None` when TLS is off.
    pub fn load(&self) -> std::io::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.grpc_tls_cert, &self.grpc_tls_key) else {
            return Ok(None);
        };
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.grpc_tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(config))
    }
}

/// A gRPC client's TLS settings, for every service it calls.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) that signed the services' certificates; used
    /// for `https://` service endpoints.
    #[arg(long, env = "ALLEZON_GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<PathBuf>,
    /// PEM certificate this process presents to services that require
    /// client certificates (mutual TLS).
    #[arg(
        long,
        env = "ALLEZON_GRPC_TLS_CLIENT_CERT",
        requires = "grpc_tls_client_key"
    )]
    pub grpc_tls_client_cert: Option<PathBuf>,
    /// PEM private key of `--grpc-tls-client-cert`.
    #[arg(
        long,
        env = "ALLEZON_GRPC_TLS_CLIENT_KEY",
        requires = "grpc_tls_client_cert"
    )]
    pub grpc_tls_client_key: Option<PathBuf>,
    /// Name the services' certificates are checked against, when it is not
    /// the endpoint's host (e.g. endpoints given by IP address).
    #[arg(long, env = "ALLEZON_GRPC_TLS_DOMAIN")]
    pub grpc_tls_domain: Option<String>,
}

impl ClientTlsArgs {
    /// The clients' TLS configuration, `None` when no CA is given.
    pub fn load(&self) -> std::io::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.grpc_tls_ca else {
            if self.grpc_tls_client_cert.is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "--grpc-tls-client-cert needs --grpc-tls-ca",
                ));
            }
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.grpc_tls_client_cert, &self.grpc_tls_client_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &self.grpc_tls_domain {
            config = config.domain_name(domain.clone());
        }
        Ok(Some(config))
    }
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|err| std::io::Error::new(err.kind(), format!("{}: {err}", path.display())))
}
