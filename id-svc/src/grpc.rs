//! The IdService gRPC API over an [`IdStore`].

use std::sync::Arc;

use allezon_core::Error;
use allezon_proto::v1 as pb;
use pb::id_service_server::IdService;
use tonic::{Request, Response, Status};

use crate::store::{IdStore, Name};

pub struct IdGrpc<S> {
    store: Arc<S>,
}

impl<S> IdGrpc<S> {
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
        }
    }
}

fn names(names: Vec<pb::IdName>) -> Result<Vec<Name>, Error> {
    names
        .into_iter()
        .map(|n| {
            let dimension = pb::Dimension::try_from(n.dimension)
                .map_err(|_| Error::invalid("dimension", "unknown value"))?;
            Ok((dimension, n.name))
        })
        .collect()
}

fn stores() -> &'static allezon_core::metrics::Stores {
    &allezon_core::metrics::metrics().stores
}

#[tonic::async_trait]
impl<S: IdStore> IdService for IdGrpc<S> {
    async fn get_or_create_ids(
        &self,
        request: Request<pb::GetOrCreateIdsRequest>,
    ) -> Result<Response<pb::IdsResponse>, Status> {
        let names = names(request.into_inner().names)?;
        let ids = stores()
            .time("ids", "get_or_create", self.store.get_or_create(names))
            .await?;
        Ok(Response::new(pb::IdsResponse { ids }))
    }

    async fn lookup_ids(
        &self,
        request: Request<pb::LookupIdsRequest>,
    ) -> Result<Response<pb::IdsResponse>, Status> {
        let names = names(request.into_inner().names)?;
        let ids = stores()
            .time("ids", "lookup", self.store.lookup(names))
            .await?;
        Ok(Response::new(pb::IdsResponse { ids }))
    }
}
