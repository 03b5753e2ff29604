//! Query strings of the two read endpoints: time ranges, limits, and the
//! aggregate query with its repeated `aggregates` parameter.

use crate::error::{Error, Result};
use crate::tag::Action;
use crate::time::{MS_PER_MINUTE, Precision, parse_query_time};

/// Profiles keep this many tags per action; it is also the default `limit`.
pub const PROFILE_KEEP: u32 = 200;
/// Longest aggregate range served: the 24 hours that retention keeps.
pub const MAX_AGGREGATE_MINUTES: i64 = 24 * 60;
/// Most query parameters read. A real query has at most seven; parsing
/// thousands of them per request would be work for nothing.
pub const MAX_QUERY_PARAMS: usize = 32;

/// A half-open range of event time, `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl TimeRange {
    /// Parses `<from>_<to>`, each end in either precision.
    pub fn parse(s: &str) -> Result<(Self, Precision)> {
        let (from, to) = s
            .split_once('_')
            .ok_or_else(|| Error::invalid("time_range", "expected <from>_<to>"))?;
        let (from_ms, p_from) =
            parse_query_time(from).map_err(|e| Error::invalid("time_range", e))?;
        let (to_ms, p_to) = parse_query_time(to).map_err(|e| Error::invalid("time_range", e))?;
        if from_ms > to_ms {
            return Err(Error::invalid("time_range", "the start is after the end"));
        }
        let precision = if p_from == Precision::Millis || p_to == Precision::Millis {
            Precision::Millis
        } else {
            Precision::Seconds
        };
        Ok((Self { from_ms, to_ms }, precision))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileQuery {
    pub range: TimeRange,
    pub limit: u32,
}

impl ProfileQuery {
    /// Parses `time_range=<from>_<to>[&limit=<n>]`.
    pub fn parse(query: Option<&str>) -> Result<Self> {
        let mut range = None;
        let mut limit = None;
        for (key, value) in pairs(query)? {
            match key.as_ref() {
                "time_range" => set_once(&mut range, "time_range", TimeRange::parse(&value)?.0)?,
                "limit" => set_once(&mut limit, "limit", parse_limit(&value)?)?,
                _ => {}
            }
        }
        Ok(Self {
            range: range.ok_or_else(|| Error::invalid("time_range", "missing"))?,
            limit: limit.unwrap_or(PROFILE_KEEP),
        })
    }
}

/// A limit is a non-negative integer. Anything above what is kept returns all
/// that is kept, so large values saturate instead of failing.
fn parse_limit(value: &str) -> Result<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid("limit", "expected a non-negative integer"));
    }
    Ok(value.parse::<u32>().unwrap_or(u32::MAX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Count,
    SumPrice,
}

impl Aggregate {
    pub fn column(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::SumPrice => "sum_price",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateQuery {
    /// Whole minutes since the epoch, `[from_minute, to_minute)`.
    pub from_minute: i64,
    pub to_minute: i64,
    pub action: Action,
    pub aggregates: Vec<Aggregate>,
    pub origin: Option<String>,
    pub brand_id: Option<String>,
    pub category_id: Option<String>,
}

impl AggregateQuery {
    pub fn parse(query: Option<&str>) -> Result<Self> {
        let mut range = None;
        let mut action = None;
        let mut aggregates = Vec::new();
        let (mut origin, mut brand_id, mut category_id) = (None, None, None);
        for (key, value) in pairs(query)? {
            match key.as_ref() {
                "time_range" => set_once(&mut range, "time_range", TimeRange::parse(&value)?.0)?,
                "action" => {
                    let parsed = Action::parse(&value)
                        .ok_or_else(|| Error::invalid("action", "must be VIEW or BUY"))?;
                    set_once(&mut action, "action", parsed)?;
                }
                "aggregates" => aggregates.push(match value.as_ref() {
                    "COUNT" => Aggregate::Count,
                    "SUM_PRICE" => Aggregate::SumPrice,
                    _ => return Err(Error::invalid("aggregates", "must be COUNT or SUM_PRICE")),
                }),
                "origin" => set_once(&mut origin, "origin", filter("origin", value)?)?,
                "brand_id" => set_once(&mut brand_id, "brand_id", filter("brand_id", value)?)?,
                "category_id" => {
                    set_once(
                        &mut category_id,
                        "category_id",
                        filter("category_id", value)?,
                    )?;
                }
                _ => {}
            }
        }
        let range = range.ok_or_else(|| Error::invalid("time_range", "missing"))?;
        if range.from_ms % MS_PER_MINUTE != 0 || range.to_ms % MS_PER_MINUTE != 0 {
            return Err(Error::invalid(
                "time_range",
                "both ends must be whole minutes",
            ));
        }
        let (from_minute, to_minute) = (range.from_ms / MS_PER_MINUTE, range.to_ms / MS_PER_MINUTE);
        if to_minute == from_minute {
            return Err(Error::invalid(
                "time_range",
                "must span at least one minute",
            ));
        }
        if to_minute - from_minute > MAX_AGGREGATE_MINUTES {
            return Err(Error::invalid("time_range", "longer than 24 hours"));
        }
        if aggregates.is_empty() {
            return Err(Error::invalid("aggregates", "missing"));
        }
        Ok(Self {
            from_minute,
            to_minute,
            action: action.ok_or_else(|| Error::invalid("action", "missing"))?,
            aggregates,
            origin,
            brand_id,
            category_id,
        })
    }

    /// Column names in the contract's order: bucket, filters, aggregates.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut columns = vec!["1m_bucket", "action"];
        if self.origin.is_some() {
            columns.push("origin");
        }
        if self.brand_id.is_some() {
            columns.push("brand_id");
        }
        if self.category_id.is_some() {
            columns.push("category_id");
        }
        columns.extend(self.aggregates.iter().map(|a| a.column()));
        columns
    }
}

fn pairs(query: Option<&str>) -> Result<form_urlencoded::Parse<'_>> {
    let query = query.unwrap_or("");
    if query.split('&').count() > MAX_QUERY_PARAMS {
        return Err(Error::invalid(
            "query",
            format_args!("more than {MAX_QUERY_PARAMS} parameters"),
        ));
    }
    Ok(form_urlencoded::parse(query.as_bytes()))
}

/// A filter value: a tag field could never hold a longer one.
fn filter(field: &str, value: std::borrow::Cow<'_, str>) -> Result<String> {
    if value.len() > crate::tag::MAX_FIELD_LEN {
        return Err(Error::invalid(
            field,
            format_args!("longer than {} bytes", crate::tag::MAX_FIELD_LEN),
        ));
    }
    Ok(value.into_owned())
}

fn set_once<T>(slot: &mut Option<T>, field: &str, value: T) -> Result<()> {
    if slot.replace(value).is_some() {
        return Err(Error::invalid(field, "given more than once"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{MAX_MS, MIN_MS, format_tag_time};
    use proptest::prelude::*;

    #[test]
    fn profile_query_defaults_the_limit() {
        let q = ProfileQuery::parse(Some(
            "time_range=2022-03-22T12:15:00.000_2022-03-22T12:30:00.000",
        ))
        .unwrap();
        assert_eq!(q.limit, 200);
        assert_eq!(q.range.to_ms - q.range.from_ms, 15 * 60_000);
        let q = ProfileQuery::parse(Some(
            "time_range=2022-03-22T12:15:00.000_2022-03-22T12:30:00.000&limit=5",
        ))
        .unwrap();
        assert_eq!(q.limit, 5);
    }

    #[test]
    fn bad_profile_queries_name_the_field() {
        for (query, field) in [
            ("", "time_range"),
            ("time_range=2022-03-22T12:15:00.000", "time_range"),
            (
                "time_range=2022-03-22T12:30:00.000_2022-03-22T12:15:00.000",
                "time_range",
            ),
            ("time_range=x_y", "time_range"),
            (
                "time_range=2022-03-22T12:15:00.000_2022-03-22T12:30:00.000&limit=-1",
                "limit",
            ),
            (
                "time_range=2022-03-22T12:15:00.000_2022-03-22T12:30:00.000&limit=ten",
                "limit",
            ),
            (
                "time_range=2022-03-22T12:15:00.000_2022-03-22T12:30:00.000&limit=",
                "limit",
            ),
            (
                "time_range=2022-03-22T12:15:00.000_2022-03-22T12:30:00.000&limit=1&limit=2",
                "limit",
            ),
        ] {
            let err = ProfileQuery::parse(Some(query)).unwrap_err();
            assert!(err.message().contains(field), "{query}: {}", err.message());
        }
    }

    #[test]
    fn aggregate_query_keeps_the_order_of_aggregates() {
        let q = AggregateQuery::parse(Some(
            "time_range=2022-03-01T00:05:00_2022-03-01T00:07:00&action=BUY&brand_id=brand_12\
             &aggregates=SUM_PRICE&aggregates=COUNT&origin=A%20B",
        ))
        .unwrap();
        assert_eq!(q.to_minute - q.from_minute, 2);
        assert_eq!(q.aggregates, vec![Aggregate::SumPrice, Aggregate::Count]);
        assert_eq!(q.origin.as_deref(), Some("A B"));
        assert_eq!(
            q.columns(),
            vec![
                "1m_bucket",
                "action",
                "origin",
                "brand_id",
                "sum_price",
                "count"
            ]
        );
    }

    #[test]
    fn bad_aggregate_queries_name_the_field() {
        let base = "time_range=2022-03-01T00:05:00_2022-03-01T00:07:00";
        for (query, field) in [
            (format!("{base}&aggregates=COUNT"), "action"),
            (format!("{base}&action=CLICK&aggregates=COUNT"), "action"),
            (format!("{base}&action=BUY"), "aggregates"),
            (format!("{base}&action=BUY&aggregates=AVG"), "aggregates"),
            (
                format!("{base}&action=BUY&aggregates=COUNT&origin=a&origin=b"),
                "origin",
            ),
            (
                "time_range=2022-03-01T00:05:30_2022-03-01T00:07:00&action=BUY&aggregates=COUNT"
                    .to_owned(),
                "time_range",
            ),
            (
                "time_range=2022-03-01T00:05:00_2022-03-01T00:05:00&action=BUY&aggregates=COUNT"
                    .to_owned(),
                "time_range",
            ),
            (
                "time_range=2022-03-01T00:00:00_2022-03-02T00:01:00&action=BUY&aggregates=COUNT"
                    .to_owned(),
                "time_range",
            ),
            (
                format!("{base}&action=BUY&aggregates=COUNT{}", "&x=1".repeat(30)),
                "query",
            ),
            (
                format!(
                    "{base}&action=BUY&aggregates=COUNT&brand_id={}",
                    "b".repeat(crate::tag::MAX_FIELD_LEN + 1)
                ),
                "brand_id",
            ),
        ] {
            let err = AggregateQuery::parse(Some(&query)).unwrap_err();
            assert!(err.message().contains(field), "{query}: {}", err.message());
        }
    }

    proptest! {
        // Parsers of client input: cheap cases, so many of them (next to
        // the cargo-fuzz targets in fuzz/).
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn time_ranges_round_trip(a in MIN_MS..=MAX_MS, b in MIN_MS..=MAX_MS) {
            let (from, to) = (a.min(b), a.max(b));
            let text = format!("{}_{}", &format_tag_time(from)[..23], &format_tag_time(to)[..23]);
            let (range, precision) = TimeRange::parse(&text).unwrap();
            prop_assert_eq!(range, TimeRange { from_ms: from, to_ms: to });
            prop_assert_eq!(precision, Precision::Millis);
        }

        #[test]
        fn limits_parse_or_name_the_field(limit in "[0-9a-z-]{0,12}") {
            let query = format!("time_range=2022-03-22T12:15:00.000_2022-03-22T12:30:00.000&limit={limit}");
            match ProfileQuery::parse(Some(&query)) {
                Ok(q) => prop_assert_eq!(u64::from(q.limit), limit.parse::<u64>().unwrap().min(u64::from(u32::MAX))),
                Err(e) => prop_assert!(e.message().contains("limit") || e.message().contains("time_range")),
            }
        }
    }
}
