//! `POST /aggregates?time_range=..&action=..&aggregates=..[&origin=..]
//! [&brand_id=..][&category_id=..]`.

use std::sync::Arc;

use allezon_core::Error;
use allezon_core::query::{Aggregate, AggregateQuery};
use allezon_core::time::format_bucket;
use allezon_proto::v1 as pb;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use serde::Serialize;

use crate::backends::Backends;
use crate::error::{ApiError, body_error};

#[derive(Serialize)]
pub struct AggregatesBody {
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

pub async fn post_aggregates(
    State(backends): State<Arc<Backends>>,
    RawQuery(query): RawQuery,
    // Debug mode: the client's expected answer; read and never looked at.
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<AggregatesBody>, ApiError> {
    body.map_err(body_error)?;
    let query = AggregateQuery::parse(query.as_deref())?;
    let totals = totals(&backends, &query).await?;

    let filters: Vec<&str> = [&query.origin, &query.brand_id, &query.category_id]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let rows = (query.from_minute..query.to_minute)
        .zip(totals)
        .map(|(minute, (count, sum))| {
            let mut row = Vec::with_capacity(2 + filters.len() + query.aggregates.len());
            row.push(format_bucket(minute));
            row.push(query.action.as_str().to_owned());
            row.extend(filters.iter().map(|f| (*f).to_owned()));
            row.extend(query.aggregates.iter().map(|a| match a {
                Aggregate::Count => count.to_string(),
                Aggregate::SumPrice => sum.to_string(),
            }));
            row
        })
        .collect();
    Ok(Json(AggregatesBody {
        columns: query.columns(),
        rows,
    }))
}

/// `(count, sum)` of every minute of the query, zeros included.
async fn totals(backends: &Backends, query: &AggregateQuery) -> Result<Vec<(u64, i64)>, ApiError> {
    let minutes = (query.to_minute - query.from_minute) as usize;
    let wanted: Vec<(pb::Dimension, &String)> = [
        (pb::Dimension::Origin, &query.origin),
        (pb::Dimension::Brand, &query.brand_id),
        (pb::Dimension::Category, &query.category_id),
    ]
    .into_iter()
    .filter_map(|(dimension, name)| name.as_ref().map(|n| (dimension, n)))
    .collect();
    let ids = if wanted.is_empty() {
        Vec::new()
    } else {
        let request = pb::LookupIdsRequest {
            names: wanted
                .iter()
                .map(|(dimension, name)| pb::IdName {
                    dimension: *dimension as i32,
                    name: (*name).clone(),
                })
                .collect(),
        };
        backends.services.ids.lookup_ids(request).await?.ids
    };
    // A name without an id was never counted: every minute is zero.
    if ids.contains(&0) {
        return Ok(vec![(0, 0); minutes]);
    }
    let id_of = |dimension: pb::Dimension| {
        wanted
            .iter()
            .zip(&ids)
            .find(|((d, _), _)| *d == dimension)
            .map_or(0, |(_, id)| *id)
    };
    let request = pb::QueryAggregatesRequest {
        action: pb::Action::from(query.action) as i32,
        origin_id: id_of(pb::Dimension::Origin),
        brand_id: id_of(pb::Dimension::Brand),
        category_id: id_of(pb::Dimension::Category),
        from_minute: query.from_minute,
        to_minute: query.to_minute,
    };
    let answer = backends
        .services
        .aggregates
        .query_aggregates(request)
        .await?;
    if answer.minutes.len() != minutes {
        return Err(Error::internal("aggregate-svc answered a different number of minutes").into());
    }
    Ok(answer
        .minutes
        .into_iter()
        .map(|m| (m.count, m.sum))
        .collect())
}
