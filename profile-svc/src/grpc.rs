//! The ProfileService gRPC API over a [`ProfileStore`].

use std::sync::Arc;

use allezon_core::query::TimeRange;
use allezon_core::tag::MAX_COOKIE_LEN;
use allezon_core::{Action, Error, UserTag};
use allezon_proto::v1 as pb;
use pb::profile_service_server::ProfileService;
use tonic::{Request, Response, Status};

use crate::store::{KEEP_PER_ACTION, Logged, ProfileStore};

pub struct ProfileGrpc<S> {
    store: Arc<S>,
}

impl<S> ProfileGrpc<S> {
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
        }
    }
}

fn stores() -> &'static allezon_core::metrics::Stores {
    &allezon_core::metrics::metrics().stores
}

#[tonic::async_trait]
impl<S: ProfileStore> ProfileService for ProfileGrpc<S> {
    async fn append_tags(
        &self,
        request: Request<pb::AppendTagsRequest>,
    ) -> Result<Response<pb::AppendTagsResponse>, Status> {
        let tags = request
            .into_inner()
            .tags
            .into_iter()
            .map(|logged| {
                let tag = logged.tag.ok_or_else(|| Error::invalid("tag", "missing"))?;
                // Validated as the gateway does, then stored in the same form.
                let tag = pb::UserTag::from(UserTag::try_from(tag)?);
                Ok(Logged {
                    tag,
                    origin: pb::TagOrigin {
                        log_partition: Some(logged.partition),
                        log_offset: Some(logged.offset),
                    },
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let first = stores()
            .time("profiles", "append", self.store.append_logged(tags))
            .await?;
        Ok(Response::new(pb::AppendTagsResponse { first }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let request = request.into_inner();
        if request.cookie.is_empty() || request.cookie.len() > MAX_COOKIE_LEN {
            return Err(Error::invalid("cookie", "must be 1 to 255 bytes").into());
        }
        if request.from_ms > request.to_ms {
            return Err(Error::invalid("time_range", "the start is after the end").into());
        }
        let range = TimeRange {
            from_ms: request.from_ms,
            to_ms: request.to_ms,
        };
        let limit = (request.limit as usize).min(KEEP_PER_ACTION);
        let (views, buys) = stores()
            .time("profiles", "query", async {
                tokio::try_join!(
                    self.store
                        .query(&request.cookie, Action::View, range, limit),
                    self.store.query(&request.cookie, Action::Buy, range, limit),
                )
            })
            .await?;
        Ok(Response::new(pb::GetProfileResponse { views, buys }))
    }
}
