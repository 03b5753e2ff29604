//! The AggregateService gRPC API over an [`AggregateStore`].

use std::sync::Arc;

use allezon_core::cells::{CellKey, Totals};
use allezon_core::query::MAX_AGGREGATE_MINUTES;
use allezon_core::{Action, Error};
use allezon_proto::v1 as pb;
use pb::aggregate_service_server::AggregateService;
use tonic::{Request, Response, Status};

use crate::store::{AggregateStore, Applied, CellFilter, DeltaBatch};

pub struct AggregateGrpc<S> {
    store: Arc<S>,
}

impl<S> AggregateGrpc<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }
}

fn delta(d: pb::CellDelta) -> Result<(CellKey, Totals), Error> {
    let key = d.key.ok_or_else(|| Error::invalid("key", "missing"))?;
    let totals = if d.wide {
        Totals {
            count: d.count,
            sum: d.sum,
        }
    } else {
        Totals::unpack(d.packed)
    };
    Ok((
        CellKey {
            minute: key.minute,
            action: Action::try_from(key.action)?,
            origin: key.origin_id,
            brand: key.brand_id,
            category: key.category_id,
        },
        totals,
    ))
}

fn stores() -> &'static allezon_core::metrics::Stores {
    &allezon_core::metrics::metrics().stores
}

#[tonic::async_trait]
impl<S: AggregateStore> AggregateService for AggregateGrpc<S> {
    async fn apply_deltas(
        &self,
        request: Request<pb::ApplyDeltasRequest>,
    ) -> Result<Response<pb::ApplyDeltasResponse>, Status> {
        let r = request.into_inner();
        if r.next_offset <= r.start_offset {
            return Err(Error::invalid("next_offset", "must be above start_offset").into());
        }
        let deltas: Vec<_> = r.deltas.into_iter().map(delta).collect::<Result<_, _>>()?;
        let cells = deltas.len() as u64;
        let applied = stores()
            .time(
                "aggregates",
                "apply",
                self.store.apply(DeltaBatch {
                    partition: r.partition,
                    start: r.start_offset,
                    next: r.next_offset,
                    deltas,
                    rebase_from: r.rebase_from,
                }),
            )
            .await?;
        if applied == Applied::Applied {
            allezon_core::metrics::metrics()
                .aggregates
                .cells_written
                .inc_by(cells);
        }
        Ok(Response::new(pb::ApplyDeltasResponse {
            applied: applied == Applied::Applied,
        }))
    }

    async fn query_aggregates(
        &self,
        request: Request<pb::QueryAggregatesRequest>,
    ) -> Result<Response<pb::QueryAggregatesResponse>, Status> {
        let r = request.into_inner();
        let minutes = r.to_minute.saturating_sub(r.from_minute);
        if !(1..=MAX_AGGREGATE_MINUTES).contains(&minutes) {
            return Err(Error::invalid("time_range", "must span 1 minute to 24 hours").into());
        }
        let filter = CellFilter {
            action: Action::try_from(r.action)?,
            origin: r.origin_id,
            brand: r.brand_id,
            category: r.category_id,
        };
        let totals = stores()
            .time(
                "aggregates",
                "query",
                self.store.query(filter, r.from_minute, r.to_minute),
            )
            .await?;
        let minutes = (r.from_minute..)
            .zip(totals)
            .map(|(minute, t)| pb::MinuteTotals {
                minute,
                count: t.count,
                sum: t.sum,
            })
            .collect();
        Ok(Response::new(pb::QueryAggregatesResponse { minutes }))
    }

    async fn get_watermarks(
        &self,
        request: Request<pb::GetWatermarksRequest>,
    ) -> Result<Response<pb::GetWatermarksResponse>, Status> {
        let partitions = request.into_inner().partitions;
        let marks = stores()
            .time(
                "aggregates",
                "watermarks",
                self.store.watermarks(&partitions),
            )
            .await?;
        Ok(Response::new(pb::GetWatermarksResponse {
            next_offsets: marks.iter().map(|w| w.next).collect(),
            pending_next_offsets: marks.iter().map(|w| w.pending_next).collect(),
        }))
    }
}
