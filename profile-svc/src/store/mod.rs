//! Where profiles live. The service talks to a [`ProfileStore`]; the embedded
//! engine implements it today, Aerospike joins it behind the same trait.

mod aerospike;
mod embedded;
mod key;

use std::future::Future;

use allezon_core::query::TimeRange;
use allezon_core::{Action, Result, UserTag};
use allezon_proto::v1 as pb;

pub use aerospike::AerospikeProfileStore;
pub use embedded::{EmbeddedProfileStore, PreparedTag};

/// Tags kept per cookie and action; older ones may be dropped.
pub const KEEP_PER_ACTION: usize = allezon_core::query::PROFILE_KEEP as usize;

/// A cookie's tags of one action, newest first.
pub type Tags = Vec<pb::UserTag>;

/// A tag read from the event log, validated, and where it was read.
#[derive(Debug, Clone)]
pub struct Logged {
    pub tag: pb::UserTag,
    pub origin: pb::TagOrigin,
}

/// A store on a cluster still connecting: UNAVAILABLE until it answers.
impl<S: ProfileStore> ProfileStore for allezon_aerospike::Pending<S> {
    async fn append(&self, tag: UserTag) -> Result<()> {
        self.get()?.append(tag).await
    }

    async fn append_logged(&self, tags: Vec<Logged>) -> Result<Vec<bool>> {
        self.get()?.append_logged(tags).await
    }

    async fn query(
        &self,
        cookie: &str,
        action: Action,
        range: TimeRange,
        limit: usize,
    ) -> Result<Tags> {
        self.get()?.query(cookie, action, range, limit).await
    }
}

pub trait ProfileStore: Send + Sync + 'static {
    /// Stores `tag`, durably, before returning. Appending the same tag twice
    /// (a client retry) stores it once.
    fn append(&self, tag: UserTag) -> impl Future<Output = Result<()>> + Send;

    /// Stores tags read from the log, in order, durably, before returning.
    /// Per tag: `true` when it is stored from this origin (now, or by an
    /// earlier call with the same origin: a replay), `false` when it was
    /// stored from another one (a duplicate further on in the log). So each
    /// distinct tag is `true` at exactly one log position, which is where
    /// the worker counts it.
    fn append_logged(&self, tags: Vec<Logged>) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// The newest `limit` tags of `action` with time in `range`, newest first,
    /// drawn only from the newest [`KEEP_PER_ACTION`] tags of that action.
    fn query(
        &self,
        cookie: &str,
        action: Action,
        range: TimeRange,
        limit: usize,
    ) -> impl Future<Output = Result<Tags>> + Send;
}
