//! Authentication and TLS towards the cluster, from configuration.

use std::path::Path;
use std::sync::Arc;

use aerospike::{AuthMode, ClientPolicy, TlsPolicy};
use allezon_core::Error;
use allezon_core::config::{AerospikeArgs, AerospikeAuthMode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Sets `policy`'s authentication and TLS from `args`: a user and password
/// when given, and TLS when a CA is given (with a client certificate when
/// one is given, for clusters that require them).
pub fn secure(mut policy: ClientPolicy, args: &AerospikeArgs) -> Result<ClientPolicy, Error> {
    if let (Some(user), Some(password)) = (&args.aerospike_user, &args.aerospike_password) {
        policy.auth_mode = match args.aerospike_auth_mode {
            AerospikeAuthMode::Internal => AuthMode::Internal(user.clone(), password.clone()),
            AerospikeAuthMode::External => AuthMode::External(user.clone(), password.clone()),
        };
    }
    if let Some(ca) = &args.aerospike_tls_ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca)? {
            roots
                .add(cert)
                .map_err(|err| invalid("aerospike_tls_ca", ca, err))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid("aerospike_tls_ca", ca, err))?
        .with_root_certificates(roots);
        let config = match (
            &args.aerospike_tls_client_cert,
            &args.aerospike_tls_client_key,
        ) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|err| invalid("aerospike_tls_client_key", key, err))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|err| invalid("aerospike_tls_client_cert", cert, err))?
            }
            _ => builder.with_no_client_auth(),
        };
        policy.tls_policy = Some(TlsPolicy::new(config));
    }
    Ok(policy)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let field = "aerospike_tls_ca";
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| invalid(field, path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(field, path, err))?;
    if certs.is_empty() {
        return Err(invalid(field, path, "no certificate in the file"));
    }
    Ok(certs)
}

fn invalid(field: &str, path: &Path, err: impl std::fmt::Display) -> Error {
    Error::invalid(field, format_args!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use allezon_core::config::{AerospikeCommitLevel, AerospikeReplica};

    fn args() -> AerospikeArgs {
        AerospikeArgs {
            aerospike_hosts: Some("127.0.0.1:3000".into()),
            aerospike_namespace: "test".into(),
            aerospike_set_prefix: String::new(),
            aerospike_socket_timeout_ms: 1000,
            aerospike_total_timeout_ms: 3000,
            aerospike_replica: AerospikeReplica::Sequence,
            aerospike_commit_level: AerospikeCommitLevel::All,
            aerospike_user: None,
            aerospike_password: None,
            aerospike_auth_mode: AerospikeAuthMode::Internal,
            aerospike_tls_ca: None,
            aerospike_tls_client_cert: None,
            aerospike_tls_client_key: None,
        }
    }

    #[test]
    fn without_settings_the_policy_is_plain() {
        let policy = secure(ClientPolicy::default(), &args()).unwrap();
        assert_eq!(policy.auth_mode, AuthMode::None);
        assert!(policy.tls_policy.is_none());
    }

    #[test]
    fn user_password_and_tls_reach_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["allezon".to_owned()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(
            dir.path().join("client-key.pem"),
            client_key.serialize_pem(),
        )
        .unwrap();
        let args = AerospikeArgs {
            aerospike_user: Some("allezon".into()),
            aerospike_password: Some("secret".into()),
            aerospike_tls_ca: Some(dir.path().join("ca.pem")),
            aerospike_tls_client_cert: Some(dir.path().join("client.pem")),
            aerospike_tls_client_key: Some(dir.path().join("client-key.pem")),
            ..args()
        };
        let policy = secure(ClientPolicy::default(), &args).unwrap();
        assert_eq!(
            policy.auth_mode,
            AuthMode::Internal("allezon".into(), "secret".into())
        );
        assert!(policy.tls_policy.is_some());
        let external = AerospikeArgs {
            aerospike_auth_mode: AerospikeAuthMode::External,
            ..args.clone()
        };
        let policy = secure(ClientPolicy::default(), &external).unwrap();
        assert_eq!(
            policy.auth_mode,
            AuthMode::External("allezon".into(), "secret".into())
        );
        // A CA file that is not PEM is an error naming the setting.
        std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
        let bad = AerospikeArgs {
            aerospike_tls_ca: Some(dir.path().join("bad.pem")),
            ..args
        };
        let err = secure(ClientPolicy::default(), &bad).unwrap_err();
        assert!(err.message().contains("aerospike_tls_ca"), "{err}");
    }
}
