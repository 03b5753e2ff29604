//! Where ids live: the [`IdStore`] trait, and its embedded and Aerospike
//! implementations.

mod aerospike;
mod embedded;

use std::future::Future;

use allezon_core::{Error, Result};
use allezon_proto::v1::Dimension;

pub use aerospike::AerospikeIdStore;
pub use embedded::EmbeddedIdStore;

/// A name of one dimension.
pub type Name = (Dimension, String);

/// A store on a cluster still connecting: UNAVAILABLE until it answers.
impl<S: IdStore> IdStore for allezon_aerospike::Pending<S> {
    async fn get_or_create(&self, names: Vec<Name>) -> Result<Vec<u32>> {
        self.get()?.get_or_create(names).await
    }

    async fn lookup(&self, names: Vec<Name>) -> Result<Vec<u32>> {
        self.get()?.lookup(names).await
    }
}

pub trait IdStore: Send + Sync + 'static {
    /// The id of each name, creating missing ones durably. Ids start at 1 and
    /// never change; concurrent first use of a name yields one id.
    fn get_or_create(&self, names: Vec<Name>) -> impl Future<Output = Result<Vec<u32>>> + Send;

    /// The id of each name, 0 for names never seen.
    fn lookup(&self, names: Vec<Name>) -> impl Future<Output = Result<Vec<u32>>> + Send;
}

pub(crate) fn check(dimension: Dimension) -> Result<()> {
    if dimension == Dimension::Unspecified {
        return Err(Error::invalid(
            "dimension",
            "must be ORIGIN, BRAND or CATEGORY",
        ));
    }
    Ok(())
}
