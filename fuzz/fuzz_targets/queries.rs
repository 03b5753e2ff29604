//! Query strings of the profile and aggregate endpoints: each either parses
//! into a query the stores can serve, or fails with an error naming a
//! field; never a panic.
#![no_main]

use allezon_core::ErrorKind;
use allezon_core::query::{AggregateQuery, MAX_AGGREGATE_MINUTES, ProfileQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    match ProfileQuery::parse(Some(query)) {
        Ok(q) => assert!(q.range.from_ms <= q.range.to_ms, "{query}"),
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.message().starts_with("invalid `"), "{}", err.message());
        }
    }
    match AggregateQuery::parse(Some(query)) {
        Ok(q) => {
            let minutes = q.to_minute - q.from_minute;
            assert!((1..=MAX_AGGREGATE_MINUTES).contains(&minutes), "{query}");
            assert!(!q.aggregates.is_empty(), "{query}");
            let filters = [&q.origin, &q.brand_id, &q.category_id]
                .iter()
                .filter(|f| f.is_some())
                .count();
            assert_eq!(q.columns().len(), 2 + filters + q.aggregates.len());
        }
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.message().starts_with("invalid `"), "{}", err.message());
        }
    }
});
