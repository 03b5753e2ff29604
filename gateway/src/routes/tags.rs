//! `POST /user_tags`: validate, make durable through the [`TagWriter`],
//! then answer 204.
//!
//! [`TagWriter`]: crate::TagWriter

use std::sync::Arc;

use allezon_core::{Error, UserTag};
use allezon_proto::v1 as pb;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use http::StatusCode;

use crate::backends::Backends;
use crate::error::{ApiError, body_error};

fn count(result: &'static str) {
    allezon_core::metrics::metrics()
        .tags
        .get_or_create(&allezon_core::metrics::ResultLabels { result })
        .inc();
}

pub async fn post_user_tag(
    State(backends): State<Arc<Backends>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let tag = UserTag::from_json(&body.map_err(body_error)?)?;
    check_not_future(tag.time_ms, now_ms())?;
    if backends.freshness.shedding() {
        count("lagging");
        return Err(Error::unavailable(format!(
            "the ingest workers are {} s behind; retry later",
            backends.freshness.lag_seconds()
        ))
        .into());
    }
    let tag: pb::UserTag = tag.into();
    // The write returns only once durable, so a 204 means the tag survives a
    // crash of any process, in profiles and in the statistics alike. A
    // client that gives up (they wait 200 ms) drops this future: a tag not
    // handed to the writer yet is in neither view, and one handed over is
    // written whole by the writer (the appender thread, or librdkafka's
    // queue), in both; never half of it.
    match backends.tags.write(tag).await {
        Ok(Some(position)) => backends.freshness.appended(position),
        Ok(None) => {}
        Err(err) => {
            count("failed");
            return Err(err.into());
        }
    }
    count("accepted");
    Ok(StatusCode::NO_CONTENT)
}

/// How far ahead of this server's clock a tag's `time` may be. Events are
/// stamped by the shop when they happen, so a tag from the future is a
/// client bug or an attack; the margin covers clocks that are off by hours.
/// Nothing bounds the past: replays send event times years old, on purpose.
pub const MAX_AHEAD_MS: i64 = 24 * 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Refuses a tag dated more than [`MAX_AHEAD_MS`] after `now_ms`. Outliers
/// that pass (in the past, or ahead of the stream but not of the wall clock)
/// are harmless too: retention follows the bulk of the stream (see
/// aggregate-svc's event clock).
fn check_not_future(time_ms: i64, now_ms: i64) -> Result<(), Error> {
    if time_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
        return Err(Error::invalid(
            "time",
            "more than 24 hours ahead of the server's clock",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_from_the_future_are_refused_and_the_past_is_not() {
        let now = 1_764_633_600_000; // 2025-12-02
        assert!(check_not_future(now + MAX_AHEAD_MS, now).is_ok());
        assert!(check_not_future(1_646_092_800_000, now).is_ok()); // 2022
        assert!(check_not_future(-62_135_596_800_000, now).is_ok()); // 0001
        let err = check_not_future(253_402_300_799_999, now).unwrap_err(); // 9999
        assert!(err.to_string().contains("`time`"), "{err}");
        assert!(check_not_future(now + MAX_AHEAD_MS + 1, now).is_err());
    }
}
