//! The time parsers: tag times (`...Z`), query times (no `Z`, seconds or
//! milliseconds) and `<from>_<to>` ranges. Whatever parses formats back to
//! the same instant; a range never runs backwards.
#![no_main]

use allezon_core::query::TimeRange;
use allezon_core::time::{format_tag_time, parse_query_time, parse_tag_time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(ms) = parse_tag_time(text) {
        assert_eq!(parse_tag_time(&format_tag_time(ms)), Ok(ms), "{text}");
    }
    if let Ok((ms, _precision)) = parse_query_time(text) {
        // The tag form without its `Z` is the millisecond query form.
        let formatted = format_tag_time(ms);
        let query_form = formatted.trim_end_matches('Z');
        assert_eq!(
            parse_query_time(query_form).map(|(ms, _)| ms),
            Ok(ms),
            "{text}"
        );
    }
    match TimeRange::parse(text) {
        Ok((range, _)) => assert!(range.from_ms <= range.to_ms, "{text}"),
        Err(err) => assert!(err.message().contains("`time_range`"), "{}", err.message()),
    }
});
