//! `POST /user_tags`: validate, store durably in the profile store and the
//! event log, then answer 204.

use std::sync::LazyLock;

use allezon_core::admin;
use allezon_core::client::retry;
use allezon_core::{Error, UserTag};
use allezon_proto::v1 as pb;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use http::{HeaderMap, StatusCode};
use prost::Message;

use crate::backends::Backends;
use crate::error::{ApiError, body_error};

static ACCEPTED: LazyLock<admin::Value> = LazyLock::new(|| {
    admin::counter(
        "allezon_tags_total{result=\"accepted\"}",
        "Tags answered 204 (durable in profiles and the event log), or not stored because a backend failed.",
    )
});
static FAILED: LazyLock<admin::Value> = LazyLock::new(|| {
    admin::counter(
        "allezon_tags_total{result=\"failed\"}",
        "Tags answered 204 (durable in profiles and the event log), or not stored because a backend failed.",
    )
});

pub async fn post_user_tag(
    State(backends): State<Backends>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let tag: pb::UserTag = UserTag::from_json(&body.map_err(body_error)?)?.into();
    let traceparent = traceparent(&headers);
    let event = pb::TagEvent {
        tag: Some(tag.clone()),
        traceparent: traceparent.clone().unwrap_or_default(),
    }
    .encode_to_vec();
    // Both writes run at once and each returns only when durable, so a 204
    // means the tag survives a crash of any process, in profiles and in
    // the statistics alike.
    //
    // The writes run in their own task: a client that gives up (they wait
    // 200 ms) must not cancel a write half-way, and cancelled gRPC calls
    // reset HTTP/2 streams, which in numbers make the services' HTTP/2 layer
    // drop the whole connection.
    let profiles = backends.profiles.clone();
    let cookie = tag.cookie.clone();
    let log = backends.log.append(&cookie, event, traceparent);
    let writes = tokio::spawn(async move {
        tokio::join!(
            // Safe to repeat: an identical tag is stored once.
            retry(|| {
                let mut client = profiles.clone();
                let request = pb::AppendTagRequest {
                    tag: Some(tag.clone()),
                };
                async move { client.append_tag(request).await }
            }),
            log
        )
    });
    let (profile, log) = writes
        .await
        .map_err(|err| Error::internal(format!("tag write task failed: {err}")))?;
    if let Err(err) = profile
        .map_err(ApiError::from)
        .and(log.map_err(ApiError::from))
    {
        FAILED.inc();
        return Err(err);
    }
    ACCEPTED.inc();
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's W3C trace context, passed on to the event log so the
/// worker's processing of the tag joins the caller's trace. Only a
/// well-formed `version-traceid-spanid-flags` value is carried.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    // `version-traceid-spanid-flags`: 2, 32, 16 and 2 hex digits.
    let mut lens = [2, 32, 16, 2].into_iter();
    let well_formed = value
        .split('-')
        .all(|part| lens.next() == Some(part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit()))
        && lens.next().is_none();
    well_formed.then(|| value.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", value.parse().unwrap());
        traceparent(&headers)
    }

    #[test]
    fn only_well_formed_trace_context_is_carried() {
        let good = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
        assert_eq!(with(good), Some(good.to_ascii_lowercase()));
        assert_eq!(traceparent(&HeaderMap::new()), None);
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-ff",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
        ] {
            assert_eq!(with(bad), None, "{bad}");
        }
    }
}
