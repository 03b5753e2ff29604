//! Name-to-id resolution through id-svc, cached: ids never change, so a name
//! costs one call in the worker's lifetime.

use std::collections::HashMap;
use std::sync::Arc;

use allezon_api::Ids;
use allezon_core::metrics::ResultLabels;
use allezon_proto::v1 as pb;

pub struct IdCache {
    ids: Arc<dyn Ids>,
    /// One map per dimension (origin, brand, category), looked up by `&str`.
    known: [HashMap<String, u32>; 3],
}

fn slot(dimension: pb::Dimension) -> usize {
    match dimension {
        pb::Dimension::Origin | pb::Dimension::Unspecified => 0,
        pb::Dimension::Brand => 1,
        pb::Dimension::Category => 2,
    }
}

impl IdCache {
    pub fn new(ids: Arc<dyn Ids>) -> Self {
        Self {
            ids,
            known: Default::default(),
        }
    }

    pub fn get(&self, dimension: pb::Dimension, name: &str) -> Option<u32> {
        self.known[slot(dimension)].get(name).copied()
    }

    /// Makes sure every name in `names` has an id, asking id-svc for the
    /// missing ones in one call.
    pub async fn resolve<'a>(
        &mut self,
        names: impl IntoIterator<Item = (pb::Dimension, &'a str)>,
    ) -> Result<(), tonic::Status> {
        let mut asked = 0;
        let mut missing: Vec<(pb::Dimension, &str)> = names
            .into_iter()
            .inspect(|_| asked += 1)
            .filter(|(dimension, name)| self.get(*dimension, name).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let lookups = &allezon_core::metrics::metrics().worker.id_cache;
        let (hits, misses) = (asked - missing.len(), missing.len());
        lookups
            .get_or_create(&ResultLabels { result: "hit" })
            .inc_by(hits as u64);
        lookups
            .get_or_create(&ResultLabels { result: "miss" })
            .inc_by(misses as u64);
        if missing.is_empty() {
            return Ok(());
        }
        let request = pb::GetOrCreateIdsRequest {
            names: missing
                .iter()
                .map(|(dimension, name)| pb::IdName {
                    dimension: *dimension as i32,
                    name: (*name).to_owned(),
                })
                .collect(),
        };
        // Safe to repeat (the client retries): a name gets the same id
        // however often it is asked.
        let ids = self.ids.get_or_create_ids(request).await?.ids;
        if ids.len() != missing.len() {
            return Err(tonic::Status::internal(
                "id-svc answered a different number of ids",
            ));
        }
        for ((dimension, name), id) in missing.into_iter().zip(ids) {
            self.known[slot(dimension)].insert(name.to_owned(), id);
        }
        Ok(())
    }
}
