//! The reference model: what a correct server must answer, computed from the
//! deterministic stream and the tool's own record of which tags were sent and
//! which are settled (acknowledged long enough ago that freshness rules say
//! they must show).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use crate::stream::{START_MS, Stream, TAGS_PER_MINUTE, Tag, WireTag};

/// Tags kept per cookie and action by the contract.
pub const KEEP: usize = 200;
/// The model keeps at most this many tags per list; enough for the newest 200
/// settled ones plus every tag still unsettled at realistic rates.
const LIST_MAX: usize = 8192;

#[derive(Debug, Default)]
pub struct Model {
    /// Per cookie, indices of its sent tags: `[views, buys]`, ascending.
    lists: HashMap<u32, [Vec<u64>; 2]>,
}

/// What a debug-mode client sends with a profile query: the answer it
/// expects, serialized straight from the stream (see [`Tag::body`]).
#[derive(Debug, serde::Serialize)]
pub struct ProfileBody {
    pub cookie: String,
    pub views: Vec<WireTag>,
    pub buys: Vec<WireTag>,
}

/// A profile query and what a correct answer looks like.
#[derive(Debug, Clone)]
pub struct ProfileCheck {
    pub cookie: u32,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: Option<usize>,
    /// Per action, the settled tags in range, newest first, with their rank
    /// among the cookie's settled tags of that action (0 = newest).
    in_range: [Vec<(u64, usize)>; 2],
    /// Index below which every tag must be visible.
    settled: u64,
}

impl Model {
    /// A model sized for a run of `tags` tags. The map of cookies never
    /// grows during the run: growing it rehashes every cookie under the
    /// driver's lock, which every request takes, and the tool stalled for
    /// 100 ms or more there, 35 s into every run at 10,000 tags/s (`perf`
    /// on the tool: `Model::record_sent` in `reserve_rehash`).
    pub fn for_tags(tags: u64) -> Self {
        let cookies = tags.min(crate::stream::COOKIES);
        Self {
            lists: HashMap::with_capacity(usize::try_from(cookies).unwrap_or(0)),
        }
    }

    pub fn record_sent(&mut self, tag: &Tag) {
        let list = &mut self.lists.entry(tag.cookie).or_default()[usize::from(tag.buy)];
        // Sends go out in index order, so appending keeps the list sorted
        // except when requests race; insert in place then.
        let at = list.partition_point(|&n| n < tag.n);
        list.insert(at, tag.n);
        if list.len() > LIST_MAX {
            list.drain(..LIST_MAX / 2);
        }
    }

    /// The check for a query on `cookie` over `[from_ms, to_ms)`, where every
    /// tag with index below `settled` must be visible. `to_ms` must not pass
    /// the settled frontier's time.
    pub fn profile_check(
        &self,
        cookie: u32,
        from_ms: i64,
        to_ms: i64,
        limit: Option<usize>,
        settled: u64,
    ) -> ProfileCheck {
        let empty = [Vec::new(), Vec::new()];
        let lists = self.lists.get(&cookie).unwrap_or(&empty);
        let mut in_range = [Vec::new(), Vec::new()];
        for action in 0..2 {
            let list = &lists[action];
            let split = list.partition_point(|&n| n < settled);
            for (rank, &n) in list[..split].iter().rev().enumerate().take(KEEP) {
                let t = START_MS + n as i64;
                if from_ms <= t && t < to_ms {
                    in_range[action].push((n, rank));
                }
            }
        }
        ProfileCheck {
            cookie,
            from_ms,
            to_ms,
            limit,
            in_range,
            settled,
        }
    }

    /// Per action, the tags of `check`'s cookie sent but not settled: each may
    /// or may not be on the server, and each one there pushes the oldest kept
    /// tag out. Take it once the answer is in, so that every tag the server
    /// could have seen is counted.
    pub fn unsettled(&self, check: &ProfileCheck) -> [usize; 2] {
        self.lists.get(&check.cookie).map_or([0, 0], |lists| {
            lists
                .each_ref()
                .map(|list| list.len() - list.partition_point(|&n| n < check.settled))
        })
    }
}

impl ProfileCheck {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(KEEP)
    }

    /// The answer if every unsettled tag had already arrived or none had:
    /// the body a debug-mode client sends. (The "none" case.)
    pub fn expected_body(&self, stream: &Stream) -> ProfileBody {
        let list = |action: usize| {
            self.in_range[action]
                .iter()
                .take(self.limit())
                .map(|(n, _)| stream.tag(*n).answer())
                .collect::<Vec<_>>()
        };
        ProfileBody {
            cookie: Tag::cookie_name(self.cookie),
            views: list(0),
            buys: list(1),
        }
    }

    /// Whether `answer` is one a correct server could give: for each action,
    /// the newest tags in range, in order, truncated to the limit and to
    /// what the newest 200 keep, with any number of the unsettled tags
    /// already counted among those 200. `Err` describes the first difference.
    pub fn verify(
        &self,
        stream: &Stream,
        answer: &Value,
        unsettled: [usize; 2],
    ) -> Result<(), String> {
        if answer["cookie"] != json!(Tag::cookie_name(self.cookie)) {
            return Err(format!("cookie is {}", answer["cookie"]));
        }
        for (action, key) in [(0, "views"), (1, "buys")] {
            let got = answer[key]
                .as_array()
                .ok_or_else(|| format!("`{key}` is not a list"))?;
            let candidates = &self.in_range[action];
            let longest = candidates.len().min(self.limit());
            // With j unsettled tags present, only settled ranks below 200 - j
            // are kept; the fewest kept is with all of them present.
            let cut = KEEP.saturating_sub(unsettled[action]);
            let shortest = candidates
                .iter()
                .filter(|(_, rank)| *rank < cut)
                .count()
                .min(self.limit());
            if got.len() > longest || got.len() < shortest {
                return Err(format!(
                    "`{key}` has {} tags, expected {}",
                    got.len(),
                    if shortest == longest {
                        shortest.to_string()
                    } else {
                        format!("{shortest} to {longest}")
                    }
                ));
            }
            for (i, (tag, (n, _))) in got.iter().zip(candidates).enumerate() {
                let want = stream.tag(*n).to_answer_json();
                if *tag != want {
                    return Err(format!("`{key}[{i}]` is {tag}, expected {want}"));
                }
            }
        }
        Ok(())
    }
}

/// An aggregate query; its answer depends only on settled minutes.
#[derive(Debug, Clone)]
pub struct AggregateCheck {
    pub buy: bool,
    /// Minutes since the stream's start, `[from, to)`.
    pub from_minute: u64,
    pub to_minute: u64,
    /// `true` for COUNT, `false` for SUM_PRICE, in the order asked.
    pub aggregates: Vec<bool>,
    pub origin: Option<u16>,
    pub brand: Option<u16>,
    pub category: Option<u8>,
}

impl AggregateCheck {
    pub fn query_string(&self) -> String {
        let minute = |m: u64| allezon_core::time::format_bucket(START_MS / 60_000 + m as i64);
        let mut q = format!(
            "time_range={}_{}&action={}",
            minute(self.from_minute),
            minute(self.to_minute),
            if self.buy { "BUY" } else { "VIEW" }
        );
        for count in &self.aggregates {
            q.push_str(if *count {
                "&aggregates=COUNT"
            } else {
                "&aggregates=SUM_PRICE"
            });
        }
        if let Some(o) = self.origin {
            q.push_str(&format!("&origin=CAMPAIGN_{o}"));
        }
        if let Some(b) = self.brand {
            q.push_str(&format!("&brand_id=brand_{b}"));
        }
        if let Some(c) = self.category {
            q.push_str(&format!("&category_id=category_{c}"));
        }
        q
    }

    /// The contract's SQL over the stream, by brute force over the minutes'
    /// tags (kept compact in `cache`, so each minute is generated once).
    pub fn expected(&self, stream: &Stream, cache: &MinuteCache) -> Value {
        let mut columns = vec!["1m_bucket", "action"];
        let mut filters = Vec::new();
        if let Some(o) = self.origin {
            columns.push("origin");
            filters.push(format!("CAMPAIGN_{o}"));
        }
        if let Some(b) = self.brand {
            columns.push("brand_id");
            filters.push(format!("brand_{b}"));
        }
        if let Some(c) = self.category {
            columns.push("category_id");
            filters.push(format!("category_{c}"));
        }
        columns.extend(
            self.aggregates
                .iter()
                .map(|c| if *c { "count" } else { "sum_price" }),
        );
        let rows: Vec<Value> = (self.from_minute..self.to_minute)
            .map(|m| {
                let (mut count, mut sum) = (0u64, 0i64);
                for t in cache.minute(stream, m).iter() {
                    if t.buy == self.buy
                        && self.origin.is_none_or(|o| o == t.origin)
                        && self.brand.is_none_or(|b| b == t.brand)
                        && self.category.is_none_or(|c| c == t.category)
                    {
                        count += 1;
                        sum += i64::from(t.price);
                    }
                }
                let mut row = vec![
                    json!(allezon_core::time::format_bucket(
                        START_MS / 60_000 + m as i64
                    )),
                    json!(if self.buy { "BUY" } else { "VIEW" }),
                ];
                row.extend(filters.iter().map(|f| json!(f)));
                row.extend(self.aggregates.iter().map(|c| {
                    json!(if *c {
                        count.to_string()
                    } else {
                        sum.to_string()
                    })
                }));
                Value::Array(row)
            })
            .collect();
        json!({"columns": columns, "rows": rows})
    }
}

/// What aggregates look at in a tag.
#[derive(Debug, Clone, Copy)]
pub struct Compact {
    buy: bool,
    origin: u16,
    brand: u16,
    category: u8,
    price: i32,
}

/// The compact tags of recently asked minutes: an hour-long query would
/// otherwise regenerate 3.6 million tags, and the tool shares the machine
/// with the server it measures.
#[derive(Debug, Default)]
pub struct MinuteCache {
    minutes: Mutex<HashMap<u64, Arc<Vec<Compact>>>>,
}

/// Minutes kept; the oldest goes first.
const CACHED_MINUTES: usize = 180;

impl MinuteCache {
    pub fn minute(&self, stream: &Stream, m: u64) -> Arc<Vec<Compact>> {
        if let Some(tags) = self
            .minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&m)
        {
            return Arc::clone(tags);
        }
        let tags: Arc<Vec<Compact>> = Arc::new(
            (m * TAGS_PER_MINUTE..(m + 1) * TAGS_PER_MINUTE)
                .map(|n| {
                    let t = stream.tag(n);
                    Compact {
                        buy: t.buy,
                        origin: t.origin,
                        brand: t.brand,
                        category: t.category,
                        price: t.price,
                    }
                })
                .collect(),
        );
        let mut minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        if minutes.len() >= CACHED_MINUTES
            && let Some(oldest) = minutes.keys().min().copied()
        {
            minutes.remove(&oldest);
        }
        minutes.insert(m, Arc::clone(&tags));
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sized for its run, the cookie map never reallocates: every tag of
    /// the run a distinct cookie, and the table is the one allocated first.
    #[test]
    fn a_model_sized_for_its_run_never_grows() {
        let stream = Stream::new(3);
        let mut model = Model::for_tags(50_000);
        let table = model.lists.capacity();
        assert!(table >= 50_000);
        for n in 0..50_000 {
            let mut tag = stream.tag(n);
            tag.cookie = n as u32;
            model.record_sent(&tag);
        }
        assert_eq!(model.lists.len(), 50_000);
        assert_eq!(model.lists.capacity(), table);
    }

    /// Tags 0, 2, 4, ... of one cookie, all settled; answers worked out by
    /// hand from the contract's rules.
    fn model_with(indices: &[u64], stream: &Stream) -> Model {
        let mut model = Model::default();
        for &n in indices {
            let mut tag = stream.tag(n);
            tag.cookie = 7;
            tag.buy = false;
            model.record_sent(&tag);
        }
        model
    }

    #[test]
    fn newest_first_within_the_range_and_the_limit() {
        let stream = Stream::new(1);
        let model = model_with(&[0, 2, 4, 6, 8], &stream);
        let check = model.profile_check(7, START_MS + 2, START_MS + 7, Some(2), 100);
        // In range [2, 7): tags 2, 4, 6; newest first, limit 2: 6, 4.
        let got: Vec<u64> = check.in_range[0].iter().take(2).map(|(n, _)| *n).collect();
        assert_eq!(got, [6, 4]);
        assert_eq!(check.expected_body(&stream).views.len(), 2);
    }

    #[test]
    fn only_the_newest_200_count() {
        let stream = Stream::new(1);
        let indices: Vec<u64> = (0..300).collect();
        let model = model_with(&indices, &stream);
        // Tags 0..100 were pushed out by the 200 newer ones.
        let check = model.profile_check(7, START_MS, START_MS + 105, None, 1_000);
        let got: Vec<u64> = check.in_range[0].iter().map(|(n, _)| *n).collect();
        assert_eq!(got, [104, 103, 102, 101, 100]);
    }

    #[test]
    fn unsettled_tags_widen_what_is_accepted() {
        let stream = Stream::new(1);
        let indices: Vec<u64> = (0..210).collect();
        let model = model_with(&indices, &stream);
        // Settled: 0..205 (the newest 200 of them are 5..205); 205..210 may
        // or may not be there, pushing out up to 5 more.
        let check = model.profile_check(7, START_MS, START_MS + 10, None, 205);
        let unsettled = model.unsettled(&check);
        assert_eq!(unsettled, [5, 0]);
        let answer = |from: u64| {
            let views: Vec<Value> = (from..10)
                .rev()
                .map(|n| stream.tag(n).to_answer_json())
                .collect();
            json!({"cookie": Tag::cookie_name(7), "views": views, "buys": []})
        };
        assert!(check.verify(&stream, &answer(5), unsettled).is_ok());
        assert!(check.verify(&stream, &answer(8), unsettled).is_ok());
        assert!(check.verify(&stream, &answer(9), unsettled).is_ok());
        assert!(
            check.verify(&stream, &answer(4), unsettled).is_err(),
            "tag 4 was already pushed out"
        );
        let mut wrong = answer(5);
        wrong["views"][0]["product_info"]["price"] = json!(-1);
        assert!(check.verify(&stream, &wrong, unsettled).is_err());
    }

    #[test]
    fn aggregates_follow_the_sql() {
        let stream = Stream::new(3);
        let check = AggregateCheck {
            buy: true,
            from_minute: 0,
            to_minute: 2,
            aggregates: vec![false, true],
            origin: None,
            brand: Some(stream.tag(5).brand),
            category: None,
        };
        let body = check.expected(&stream, &MinuteCache::default());
        assert_eq!(
            body["columns"],
            json!(["1m_bucket", "action", "brand_id", "sum_price", "count"])
        );
        // Count minute 0 by hand, the slow way.
        let mut count = 0;
        let mut sum = 0i64;
        for n in 0..60_000 {
            let t = stream.tag(n);
            if t.buy && t.brand == stream.tag(5).brand {
                count += 1;
                sum += i64::from(t.price);
            }
        }
        assert_eq!(
            body["rows"][0],
            json!([
                "2022-03-01T00:00:00",
                "BUY",
                format!("brand_{}", stream.tag(5).brand),
                sum.to_string(),
                count.to_string()
            ])
        );
        assert_eq!(body["rows"][1][0], "2022-03-01T00:01:00");
        assert!(check.query_string().starts_with("time_range=2022-03-01T00:00:00_2022-03-01T00:02:00&action=BUY&aggregates=SUM_PRICE&aggregates=COUNT&brand_id="));
    }
}
