//! Configuration pieces shared by the binaries. Precedence is
//! defaults < environment < flags, which `clap` with `env` gives us.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

pub use crate::admin::AdminAddr;

/// Where a service keeps its embedded stores.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory of the embedded stores and log; created when missing.
    #[arg(long, env = "ALLEZON_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// The address a gRPC service listens on.
#[derive(Debug, Clone, Args)]
pub struct GrpcAddrArgs {
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "ALLEZON_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    #[command(flatten)]
    pub tls: crate::tls::ServerTlsArgs,
}

/// What every standalone gRPC service is started with.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub grpc: GrpcAddrArgs,
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// How a client reaches one of our gRPC services.
pub fn endpoint_uri(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Where the services answer, for the gateway and the workers that call
/// them over gRPC.
#[derive(Debug, Clone, Args)]
pub struct ServiceEndpointArgs {
    /// gRPC endpoint of profile-svc.
    #[arg(
        long,
        env = "ALLEZON_PROFILE_SVC",
        default_value = "http://127.0.0.1:50051"
    )]
    pub profile_svc: String,
    /// gRPC endpoint of aggregate-svc.
    #[arg(
        long,
        env = "ALLEZON_AGGREGATE_SVC",
        default_value = "http://127.0.0.1:50052"
    )]
    pub aggregate_svc: String,
    /// gRPC endpoint of id-svc.
    #[arg(long, env = "ALLEZON_ID_SVC", default_value = "http://127.0.0.1:50053")]
    pub id_svc: String,
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
}

/// The operator's port: liveness, readiness and Prometheus metrics.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    // Each binary has its own default port (`parse_with_admin_default`), so
    // the five processes fit on one machine next to the all-in-one: 9464
    // (the OpenTelemetry Prometheus exporter's port) to 9469, clear of
    // Prometheus (9090), its Pushgateway and Alertmanager (9091, 9093) and
    // node_exporter (9100).
    /// Admin HTTP address serving `/healthz`, `/readyz` and `/metrics`, or
    /// `off`.
    #[arg(long, env = "ALLEZON_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: AdminAddr,
}

/// Parses a binary's command line, with `admin_default` as the default of
/// `--admin-addr`: every binary serves its admin port unless told `off`.
pub fn parse_with_admin_default<T: clap::Parser>(admin_default: &'static str) -> T {
    let command = T::command().mut_arg("admin_addr", |arg| arg.default_value(admin_default));
    let mut matches = command.get_matches();
    T::from_arg_matches_mut(&mut matches).unwrap_or_else(|err| err.exit())
}

/// The Kafka event log.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (`host:port[,host:port…]`). Without them the
    /// event log is the embedded one, inside this process.
    #[arg(long, env = "ALLEZON_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic of the event log.
    #[arg(long, env = "ALLEZON_KAFKA_TOPIC", default_value = "user-tags")]
    pub kafka_topic: String,
    /// Create the topic when it is missing, with this many partitions (the
    /// most workers that can share the load) and `--kafka-replication`.
    #[arg(long, env = "ALLEZON_KAFKA_CREATE_PARTITIONS")]
    pub kafka_create_partitions: Option<u32>,
    /// Replication factor of a topic this process creates.
    #[arg(long, env = "ALLEZON_KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: u16,
    /// How long the producer lingers to batch tags into one request.
    #[arg(long, env = "ALLEZON_KAFKA_LINGER_MS", default_value_t = 20)]
    pub kafka_linger_ms: u64,
    /// librdkafka properties passed through to every Kafka client, as
    /// `name=value`: repeat the flag, or separate them with commas. A part
    /// without `=` continues the value before it, so list values keep their
    /// commas (`debug=cgrp,fetch`). This is how TLS and SASL are set, e.g.
    /// `security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,
    /// sasl.username=…,sasl.password=…,ssl.ca.location=/etc/kafka/ca.pem`
    /// (TLS needs a build with the `event-log/ssl` feature). Unknown names
    /// or values stop the process at start.
    #[arg(
        long = "kafka-property",
        env = "ALLEZON_KAFKA_PROPERTIES",
        value_parser = parse_properties
    )]
    pub kafka_properties: Vec<Properties>,
}

impl KafkaArgs {
    /// Every `name=value` given, in order.
    pub fn properties(&self) -> Vec<(String, String)> {
        self.kafka_properties
            .iter()
            .flat_map(|p| p.0.iter().cloned())
            .collect()
    }
}

/// The `name=value` pairs of one `--kafka-property` (or of the variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

/// `name=value[,name=value…]`, for [`KafkaArgs::kafka_properties`]. A part
/// without `=` belongs to the value before it: librdkafka's list values
/// (`debug`, `ssl.cipher.suites`) contain commas.
fn parse_properties(text: &str) -> Result<Properties, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(',') {
        match part.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                out.push((name.trim().to_owned(), value.to_owned()));
            }
            None if !out.is_empty() => {
                if let Some((_, value)) = out.last_mut() {
                    value.push(',');
                    value.push_str(part);
                }
            }
            _ => return Err(format!("expected name=value, got {part:?}")),
        }
    }
    Ok(Properties(out))
}

/// Which replica serves reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AerospikeReplica {
    Master,
    Sequence,
    Any,
}

/// When the server answers a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AerospikeCommitLevel {
    /// After every replica applied it (survives losing the master).
    All,
    /// After the master applied it.
    Master,
}

/// An Aerospike cluster as a service's store.
#[derive(Debug, Clone, Args)]
pub struct AerospikeArgs {
    /// Seed hosts, `host:port[,host:port…]`. Without them the service uses
    /// its embedded store in `--data-dir`.
    #[arg(long, env = "ALLEZON_AEROSPIKE_HOSTS")]
    pub aerospike_hosts: Option<String>,
    #[arg(long, env = "ALLEZON_AEROSPIKE_NAMESPACE", default_value = "test")]
    pub aerospike_namespace: String,
    /// Prefix of the set names (`<prefix>profiles`, `<prefix>cells`, …), so
    /// several deployments can share a namespace.
    #[arg(long, env = "ALLEZON_AEROSPIKE_SET_PREFIX", default_value = "")]
    pub aerospike_set_prefix: String,
    /// Per-attempt socket timeout, in milliseconds.
    #[arg(
        long,
        env = "ALLEZON_AEROSPIKE_SOCKET_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub aerospike_socket_timeout_ms: u64,
    /// Total time for one command including retries, in milliseconds.
    #[arg(
        long,
        env = "ALLEZON_AEROSPIKE_TOTAL_TIMEOUT_MS",
        default_value_t = 3000
    )]
    pub aerospike_total_timeout_ms: u64,
    #[arg(
        long,
        env = "ALLEZON_AEROSPIKE_REPLICA",
        value_enum,
        default_value = "sequence"
    )]
    pub aerospike_replica: AerospikeReplica,
    #[arg(
        long,
        env = "ALLEZON_AEROSPIKE_COMMIT_LEVEL",
        value_enum,
        default_value = "all"
    )]
    pub aerospike_commit_level: AerospikeCommitLevel,
    /// User for a cluster with security enabled (with
    /// `ALLEZON_AEROSPIKE_PASSWORD`).
    #[arg(long, env = "ALLEZON_AEROSPIKE_USER", requires = "aerospike_password")]
    pub aerospike_user: Option<String>,
    /// Password of `--aerospike-user`; best given in the environment.
    #[arg(long, env = "ALLEZON_AEROSPIKE_PASSWORD", hide_env_values = true)]
    pub aerospike_password: Option<String>,
    /// `internal` (the server checks a hash) or `external` (LDAP: the
    /// password is sent, so only over TLS).
    #[arg(
        long,
        env = "ALLEZON_AEROSPIKE_AUTH_MODE",
        value_enum,
        default_value = "internal"
    )]
    pub aerospike_auth_mode: AerospikeAuthMode,
    /// PEM CA certificate(s) of a TLS-enabled cluster; turns TLS on. Give
    /// hosts as `host:tls-name:port`.
    #[arg(long, env = "ALLEZON_AEROSPIKE_TLS_CA")]
    pub aerospike_tls_ca: Option<std::path::PathBuf>,
    /// PEM certificate this process presents when the cluster asks for one.
    #[arg(
        long,
        env = "ALLEZON_AEROSPIKE_TLS_CLIENT_CERT",
        requires_all = ["aerospike_tls_ca", "aerospike_tls_client_key"]
    )]
    pub aerospike_tls_client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--aerospike-tls-client-cert`.
    #[arg(
        long,
        env = "ALLEZON_AEROSPIKE_TLS_CLIENT_KEY",
        requires = "aerospike_tls_client_cert"
    )]
    pub aerospike_tls_client_key: Option<std::path::PathBuf>,
}

/// How the Aerospike client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AerospikeAuthMode {
    Internal,
    External,
}

/// What a standalone store service is started with: where it listens, and
/// either an Aerospike cluster or a data directory.
#[derive(Debug, Clone, Args)]
pub struct StoreServiceArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub aerospike: AerospikeArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn kafka_properties_are_name_value_pairs() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-property",
            "security.protocol=SASL_SSL",
            "--kafka-property",
            "sasl.password=a=b",
        ])
        .unwrap();
        assert_eq!(
            cli.kafka.properties(),
            vec![
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.password".to_owned(), "a=b".to_owned()),
            ]
        );
        // Several in one, and list values that keep their commas.
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-property",
            "debug=cgrp,fetch,security.protocol=SSL",
        ])
        .unwrap();
        assert_eq!(
            cli.kafka.properties(),
            vec![
                ("debug".to_owned(), "cgrp,fetch".to_owned()),
                ("security.protocol".to_owned(), "SSL".to_owned()),
            ]
        );
        assert!(Cli::try_parse_from(["x", "--kafka-property", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["x", "--kafka-property", "=x"]).is_err());
        assert!(Cli::try_parse_from(["x", "--kafka-property", "a=1,=x"]).is_err());
    }
}
