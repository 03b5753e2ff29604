//! The Aerospike cluster as a store: one connected client per process,
//! policies built once from configuration, set names with the deployment's
//! prefix, and the mapping of Aerospike errors onto Allezon's.
//!
//! The stores themselves live with their services (`profile-svc`,
//! `aggregate-svc`, `id-svc`), next to their embedded twins.

mod pending;
mod security;

use std::sync::Arc;

use aerospike::operations::{MapOrder, maps};
use aerospike::policy::{BasePolicy, CommitLevel, Expiration, Replica};
use aerospike::{
    Client, ClientPolicy, Key, MapPolicy, MapReturnType, MapWriteFlags, ReadPolicy, ResultCode,
    Value, WritePolicy,
};
use allezon_core::Error;
use allezon_core::config::{AerospikeArgs, AerospikeCommitLevel, AerospikeReplica};

pub use aerospike;
pub use pending::Pending;

/// Connections per node kept open: about what a service has in flight at
/// 2,000 tags/s with millisecond commands, with room for bursts.
const MIN_CONNECTIONS_PER_NODE: usize = 16;
/// Records written at once while warming up: more than the pool opens, so
/// the first burst of real writes finds every connection it needs.
const WARM_UP_WRITES: i64 = 64;

/// A connected cluster and the policies every store uses.
#[derive(Clone)]
pub struct Cluster {
    client: Arc<Client>,
    namespace: Arc<str>,
    set_prefix: Arc<str>,
    base: BasePolicy,
    commit_level: CommitLevel,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("set_prefix", &self.set_prefix)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Keeps the `aerospike` readiness condition to whether the client has
    /// a live node: a service that lost its cluster reports NOT_SERVING
    /// until the client reconnects (it does so by itself).
    pub fn watch(
        &self,
        readiness: &allezon_core::admin::Readiness,
        shutdown: &allezon_core::shutdown::Shutdown,
    ) {
        let client = Arc::clone(&self.client);
        readiness.watch(
            "aerospike",
            std::time::Duration::from_secs(2),
            shutdown.clone(),
            move || {
                let connected = client.is_connected();
                async move { connected }
            },
        );
    }

    /// Connects to the seed hosts in `args`, which must be set.
    pub async fn connect(args: &AerospikeArgs) -> Result<Self, Error> {
        let hosts = args
            .aerospike_hosts
            .as_deref()
            .ok_or_else(|| Error::invalid("aerospike_hosts", "not configured"))?;
        let policy = security::secure(
            ClientPolicy {
                // Connections opened up front: the first burst of tags would
                // otherwise wait for TCP set-up on every concurrent command.
                min_conns_per_node: MIN_CONNECTIONS_PER_NODE,
                ..ClientPolicy::default()
            },
            args,
        )?;
        let client = Client::new(&policy, &hosts.to_owned())
            .await
            .map_err(|err| Error::unavailable(format!("aerospike at {hosts}: {err}")))?;
        let base = BasePolicy {
            socket_timeout: millis(args.aerospike_socket_timeout_ms),
            total_timeout: millis(args.aerospike_total_timeout_ms),
            replica: match args.aerospike_replica {
                AerospikeReplica::Master => Replica::Master,
                AerospikeReplica::Sequence => Replica::MasterProles,
                AerospikeReplica::Any => Replica::Random,
            },
            ..BasePolicy::default()
        };
        let commit_level = match args.aerospike_commit_level {
            AerospikeCommitLevel::All => CommitLevel::CommitAll,
            AerospikeCommitLevel::Master => CommitLevel::CommitMaster,
        };
        tracing::info!(%hosts, namespace = %args.aerospike_namespace, "connected to aerospike");
        let cluster = Self {
            client: Arc::new(client),
            namespace: args.aerospike_namespace.as_str().into(),
            set_prefix: args.aerospike_set_prefix.as_str().into(),
            base,
            commit_level,
        };
        cluster.warm_up().await;
        Ok(cluster)
    }

    /// Opens the pool's connections, and takes the server's write path
    /// through its first use, now instead of during the first burst of real
    /// commands: concurrent reads of a missing record, then concurrent
    /// writes (each a map put and trim, like a profile append) to records of
    /// a set of their own, which expire within a minute.
    async fn warm_up(&self) {
        let set = self.set("warm_up");
        let policy = &self.read_policy();
        let reads = (0..MIN_CONNECTIONS_PER_NODE).filter_map(|_| {
            let key = self.key(&set, "none").ok()?;
            Some(async move { self.client.exists(policy, &key).await })
        });
        for result in futures::future::join_all(reads).await {
            if let Err(err) = result {
                tracing::warn!(%err, "aerospike warm-up read failed");
                return;
            }
        }
        let mut write = self.write_policy();
        write.expiration = Expiration::Seconds(60);
        let map = MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::DEFAULT);
        for round in 0..4i64 {
            let writes = (0..WARM_UP_WRITES).filter_map(|i| {
                let key = self.key(&set, i).ok()?;
                let ops = [
                    maps::put(&map, "w", Value::Int(round), Value::Int(i)),
                    maps::remove_by_index_range_from("w", -2, MapReturnType::NONE.inverted()),
                ];
                let write = &write;
                Some(async move { self.client.operate(write, &key, &ops).await })
            });
            for result in futures::future::join_all(writes).await {
                if let Err(err) = result {
                    tracing::warn!(%err, "aerospike warm-up write failed");
                    return;
                }
            }
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The full name of one of our sets.
    pub fn set(&self, name: &str) -> String {
        format!("{}{name}", self.set_prefix)
    }

    pub fn key(&self, set: &str, key: impl Into<Value>) -> Result<Key, Error> {
        Key::new(self.namespace.as_ref(), set, key.into()).map_err(to_error)
    }

    pub fn read_policy(&self) -> ReadPolicy {
        ReadPolicy {
            base_policy: self.base.clone(),
        }
    }

    /// For `operate` calls that only read: they may be retried freely.
    pub fn read_operate_policy(&self) -> WritePolicy {
        WritePolicy {
            base_policy: self.base.clone(),
            ..WritePolicy::default()
        }
    }

    /// Writes keep the record's TTL unless told otherwise and wait for the
    /// configured commit level. Retries are off: our writes are increments
    /// and appends, and a retry after a lost answer must be the caller's
    /// decision, made with the idempotency check in hand.
    pub fn write_policy(&self) -> WritePolicy {
        let mut base = self.base.clone();
        base.max_retries = 0;
        WritePolicy {
            base_policy: base,
            commit_level: self.commit_level,
            expiration: Expiration::DontUpdate,
            ..WritePolicy::default()
        }
    }
}

fn millis(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// The result code of a server-side failure, if it was one.
pub fn result_code(err: &aerospike::Error) -> Option<ResultCode> {
    err.server_result_code()
}

/// Aerospike's errors as Allezon's: time-outs and unreachable nodes are
/// transient (callers retry), the rest is a bug or a misconfiguration.
pub fn to_error(err: aerospike::Error) -> Error {
    use aerospike::ErrorKind;
    match err.kind() {
        ErrorKind::Timeout => allezon_core::Error::new(
            allezon_core::ErrorKind::DeadlineExceeded,
            format!("aerospike: {err}"),
        ),
        ErrorKind::Connection
        | ErrorKind::ConnectionPoolEmpty
        | ErrorKind::NoMoreConnections
        | ErrorKind::MaxErrorRate
        | ErrorKind::InvalidNode => Error::unavailable(format!("aerospike: {err}")),
        ErrorKind::Server {
            rc:
                ResultCode::KeyBusy
                | ResultCode::Timeout
                | ResultCode::DeviceOverload
                | ResultCode::PartitionUnavailable,
            ..
        } => Error::unavailable(format!("aerospike: {err}")),
        _ => Error::internal(format!("aerospike: {err}")),
    }
}

/// For tests: the cluster named by `AEROSPIKE_HOSTS`, with sets prefixed by
/// `prefix` and a unique suffix so runs do not see each other's records.
/// Panics when the variable is not set: every test that calls it is
/// `#[ignore]`d, and `scripts/test.sh` runs those only when it is set.
pub async fn test_cluster(prefix: &str) -> Cluster {
    let Ok(hosts) = std::env::var("AEROSPIKE_HOSTS") else {
        panic!(
            "this test needs an Aerospike server: set AEROSPIKE_HOSTS (it is #[ignore]d otherwise)"
        );
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let args = AerospikeArgs {
        aerospike_hosts: Some(hosts),
        aerospike_namespace: std::env::var("AEROSPIKE_NAMESPACE").unwrap_or_else(|_| "test".into()),
        aerospike_set_prefix: format!("{prefix}{}_", nanos % 1_000_000_000),
        aerospike_socket_timeout_ms: 1000,
        aerospike_total_timeout_ms: 3000,
        aerospike_replica: AerospikeReplica::Sequence,
        aerospike_commit_level: AerospikeCommitLevel::All,
        aerospike_user: std::env::var("AEROSPIKE_USER").ok(),
        aerospike_password: std::env::var("AEROSPIKE_PASSWORD").ok(),
        aerospike_auth_mode: allezon_core::config::AerospikeAuthMode::Internal,
        aerospike_tls_ca: None,
        aerospike_tls_client_cert: None,
        aerospike_tls_client_key: None,
    };
    match Cluster::connect(&args).await {
        Ok(cluster) => cluster,
        Err(err) => panic!("AEROSPIKE_HOSTS is set but the cluster is unreachable: {err}"),
    }
}
