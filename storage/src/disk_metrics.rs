//! The engine's own state as Prometheus gauges: bytes on disk per keyspace
//! and per journal, and first-level tables per keyspace. What an operator
//! needs to see disk growth per tag and a compaction falling behind, which
//! no request-level series shows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use allezon_core::metrics::{EngineLabels, KeyspaceLabels, metrics};
use fjall::Keyspace;

/// How often the gauges are refreshed. The sums are in memory (table sizes
/// the engine keeps) plus a listing of the journals: cheap, but
/// nobody reads disk sizes more often than a scrape interval.
const EVERY: Duration = Duration::from_secs(5);

/// The keyspaces opened on one engine, shared with its sampler.
pub(crate) struct Opened {
    dir: PathBuf,
    keyspaces: Mutex<Vec<(String, Keyspace)>>,
}

impl Opened {
    /// Starts sampling the engine in `dir`. The sampler holds only a weak
    /// reference, so it never keeps a closed store's directory open; it
    /// stops within [`EVERY`] after the last handle is dropped.
    pub(crate) fn start(dir: &Path) -> Arc<Self> {
        let opened = Arc::new(Self {
            dir: dir.to_owned(),
            keyspaces: Mutex::default(),
        });
        let weak = Arc::downgrade(&opened);
        // Without the thread the gauges only stay at zero: not worth
        // failing an open over.
        if let Err(err) = std::thread::Builder::new()
            .name("store-metrics".into())
            .spawn(move || sample_while_open(&weak))
        {
            tracing::warn!(%err, "engine gauges not sampled");
        }
        opened
    }

    pub(crate) fn add(&self, name: &str, keyspace: &Keyspace) {
        let mut keyspaces = self
            .keyspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !keyspaces.iter().any(|(known, _)| known == name) {
            keyspaces.push((name.to_owned(), keyspace.clone()));
        }
    }

    pub(crate) fn sample(&self) {
        let stores = &metrics().stores;
        let keyspaces = self
            .keyspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, keyspace) in keyspaces.iter() {
            let labels = KeyspaceLabels {
                keyspace: name.clone(),
            };
            stores
                .disk
                .get_or_create(&labels)
                .set(gauge(keyspace.disk_space()));
            stores
                .l0_tables
                .get_or_create(&labels)
                .set(gauge(keyspace.l0_table_count() as u64));
        }
        // An error here is a failed listing of the directory; the next
        // sample tries again.
        if let Ok(bytes) = journal_bytes(&self.dir) {
            stores
                .journal
                .get_or_create(&EngineLabels {
                    engine: self.dir.display().to_string(),
                })
                .set(gauge(bytes));
        }
    }
}

/// Bytes allocated to the journals in `dir`. Not the engine's own figure,
/// which counts the active journal at its preallocated length (64 MiB, a
/// sparse file) however little of it is written.
fn journal_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|ext| ext == "jnl") {
            // `blocks` counts 512-byte units whatever the file system's
            // block size.
            bytes += entry.metadata()?.blocks() * 512;
        }
    }
    Ok(bytes)
}

fn sample_while_open(opened: &Weak<Opened>) {
    loop {
        std::thread::sleep(EVERY);
        match opened.upgrade() {
            Some(opened) => opened.sample(),
            None => return,
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use crate::Store;

    fn series(name: &str, label: &str) -> Option<f64> {
        let text = allezon_core::metrics::render();
        let prefix = format!("{name}{{{label}}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.parse().unwrap())
    }

    #[test]
    fn the_gauges_show_tables_and_journals_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ks = store.keyspace("gauged").unwrap();
        for i in 0u32..10_000 {
            ks.insert(i.to_be_bytes(), [7u8; 100]).unwrap();
        }
        store
            .database()
            .persist(crate::PersistMode::SyncData)
            .unwrap();
        store.opened.sample();
        let label = "keyspace=\"gauged\"";
        assert_eq!(series("allezon_store_disk_bytes", label), Some(0.0));
        let engine = format!("engine=\"{}\"", dir.path().display());
        let journal = series("allezon_store_journal_bytes", &engine).unwrap();
        // A million bytes written, compressed by nothing: all in the journal.
        assert!(journal > 1_000_000.0, "{journal}");

        ks.rotate_memtable_and_wait().unwrap();
        store.opened.sample();
        let disk = series("allezon_store_disk_bytes", label).unwrap();
        // LZ4 shrinks the repeated bytes, but a table is never empty.
        assert!(disk > 1_000.0, "{disk}");
        // The flush may be compacted on at any moment: the gauge is what
        // the engine counts, whatever it is, so compare it with a count
        // that did not change around the sample.
        let (l0, counted) = (0..100)
            .find_map(|_| {
                let before = ks.l0_table_count();
                store.opened.sample();
                let l0 = series("allezon_store_l0_tables", label).unwrap();
                (ks.l0_table_count() == before).then_some((l0, before))
            })
            .unwrap();
        assert_eq!(l0, counted as f64);
    }
}
