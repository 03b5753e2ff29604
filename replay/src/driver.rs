//! Sends the stream, issues the queries, and checks every answer.
//!
//! Freshness: a tag counts as *settled* for profiles once it was acknowledged
//! 10 s ago, and for aggregates once 60 s ago (the contract's rules). Queries
//! only ask about settled time; for profiles, tags not yet settled may or may
//! not be visible, and the check accepts either (see [`crate::model`]).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::model::{AggregateCheck, MinuteCache, Model, ProfileCheck};
use crate::stats::{Endpoint, EndpointStats, Outcome};
use crate::stream::{START_MS, Stream, TAGS_PER_MINUTE, mix};

/// When the tags went out.
#[derive(Debug, Clone, Default)]
pub struct SendLog {
    /// Tags handed to the client in each whole second of the run.
    pub per_second: Vec<u64>,
    /// From the start to the last tag handed out.
    pub sending: Duration,
}

impl SendLog {
    fn sent(&mut self, at: Duration) {
        let second = at.as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
        self.sending = at;
    }

    /// Tags per second over the sending phase.
    pub fn rate(&self) -> f64 {
        self.per_second.iter().sum::<u64>() as f64 / self.sending.as_secs_f64().max(1e-3)
    }
}

/// One query in this many carries a deliberately wrong debug body: a server
/// that echoes the body instead of computing the answer gets caught.
const WRONG_DEBUG_BODY_EVERY: u64 = 7;

#[derive(Debug, Clone)]
pub struct Plan {
    pub target: String,
    pub seed: u64,
    pub tags: u64,
    /// Tags per second; `None` sends as fast as `max_in_flight` allows.
    pub rate: Option<f64>,
    pub max_in_flight: usize,
    /// One profile query per this many tags (0: none).
    pub profile_every: u64,
    /// One aggregate query per this many tags (0: none).
    pub aggregate_every: u64,
    /// How long after its acknowledgement a tag must show in profiles.
    pub profile_freshness: Duration,
    /// How long after its acknowledgement a tag must be counted.
    pub aggregate_freshness: Duration,
    /// Per endpoint (tags, profiles, aggregates), how long to wait for an
    /// answer before counting it timed out.
    pub timeouts: [Duration; 3],
}

/// Which prefix of the stream is acknowledged, and since when.
#[derive(Default)]
struct Acks {
    /// The longest freshness window asked about.
    keep_for: Duration,
    /// Every tag below this index is done (acknowledged or failed).
    prefix: u64,
    done_beyond: BTreeSet<u64>,
    /// (when, prefix) samples, oldest first; pruned past the longest freshness.
    history: VecDeque<(Instant, u64)>,
}

impl Acks {
    fn done(&mut self, n: u64, now: Instant) {
        self.done_beyond.insert(n);
        let before = self.prefix;
        while self.done_beyond.remove(&self.prefix) {
            self.prefix += 1;
        }
        if self.prefix != before {
            let recent = self
                .history
                .back()
                .is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_millis(10));
            if recent {
                if let Some(last) = self.history.back_mut() {
                    last.1 = self.prefix;
                }
            } else {
                self.history.push_back((now, self.prefix));
            }
            // Keep one sample older than the longest freshness window.
            while self.history.len() > 1
                && self
                    .history
                    .get(1)
                    .is_some_and(|(t, _)| now.duration_since(*t) > self.keep_for)
            {
                self.history.pop_front();
            }
        }
    }

    /// Tags below the returned index were all done `age` ago or earlier.
    fn settled(&self, age: Duration, now: Instant) -> u64 {
        self.history
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= age)
            .map_or(0, |(_, p)| *p)
    }
}

struct State {
    model: Model,
    acks: Acks,
    /// Cookies and minutes touched by a tag whose fate is unknown (error or
    /// timeout): their answers cannot be predicted, so they are not asked.
    poisoned_cookies: HashSet<u32>,
    poisoned_minutes: HashSet<u64>,
    /// Tags not answered 204, by what their answer says of them.
    fates: Fates,
    stats: [EndpointStats; 3],
}

/// What became of the tags that were not acknowledged. A tag refused with
/// an HTTP status, or whose connection was never made, is stored nowhere
/// (the contract: any other status than 204 means not accepted). A tag
/// whose answer never came (a timeout, a connection cut mid-request) may or
/// may not be stored.
#[derive(Debug, Clone, Default)]
pub struct Fates {
    pub refused: HashSet<u64>,
    pub unknown: HashSet<u64>,
}

/// How an exchange ended, for a tag's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// A 2xx answer.
    Answered,
    /// Refused: a non-2xx status, or no connection was made.
    Refused,
    /// No answer: the request may have been served.
    Unknown,
}

pub struct Driver {
    plan: Plan,
    stream: Stream,
    client: reqwest::Client,
    /// Parsed once: parsing it again for every tag cost about 7 % of this
    /// tool's user CPU, which it shares with the server it measures.
    tags_url: reqwest::Url,
    state: Mutex<State>,
    permits: Semaphore,
    started: Instant,
    minutes: Arc<MinuteCache>,
}

impl Driver {
    pub fn new(plan: Plan) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(plan.max_in_flight.max(1))
            .tcp_nodelay(true)
            .build()?;
        let tags_url = reqwest::Url::parse(&format!("{}/user_tags", plan.target))?;
        Ok(Arc::new(Self {
            tags_url,
            stream: Stream::new(plan.seed),
            permits: Semaphore::new(plan.max_in_flight.max(1)),
            client,
            state: Mutex::new(State {
                model: Model::for_tags(plan.tags),
                acks: Acks {
                    keep_for: plan.profile_freshness.max(plan.aggregate_freshness),
                    ..Acks::default()
                },
                poisoned_cookies: HashSet::new(),
                poisoned_minutes: HashSet::new(),
                fates: Fates::default(),
                stats: EndpointStats::sized_for(plan.tags, plan.profile_every),
            }),
            started: Instant::now(),
            minutes: Arc::default(),
            plan,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stats(&self) -> [EndpointStats; 3] {
        self.state().stats.clone()
    }

    /// The tags not acknowledged, by fate.
    pub fn fates(&self) -> Fates {
        self.state().fates.clone()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Counts so far, for the progress line.
    pub fn counts(&self) -> [(u64, u64); 3] {
        let state = self.state();
        state
            .stats
            .each_ref()
            .map(|s| (s.correct, s.total() - s.correct))
    }

    /// Runs the whole plan; `sent` is told after every tag handed out.
    /// Returns how many tags went out in each second of the run.
    pub async fn run(self: &Arc<Self>, sent: impl Fn(u64)) -> SendLog {
        let mut tasks = tokio::task::JoinSet::new();
        let mut log = SendLog::default();
        for n in 0..self.plan.tags {
            if let Some(rate) = self.plan.rate {
                let due = self.started + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let Ok(permit) = self.permits.acquire().await else {
                break;
            };
            permit.forget();
            let me = Arc::clone(self);
            tasks.spawn(async move { me.send_tag(n).await });
            let q = n + 1;
            if self.plan.profile_every > 0 && q % self.plan.profile_every == 0 {
                let me = Arc::clone(self);
                tasks.spawn(async move { me.profile_query(q).await });
            }
            if self.plan.aggregate_every > 0 && q % self.plan.aggregate_every == 0 {
                let me = Arc::clone(self);
                tasks.spawn(async move { me.aggregate_query(q).await });
            }
            sent(n + 1);
            log.sent(self.started.elapsed());
            // Reap finished tasks so the set stays small on long runs.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        log
    }

    async fn send_tag(self: Arc<Self>, n: u64) {
        let tag = self.stream.tag(n);
        self.state().model.record_sent(&tag);
        let body = tag.body();
        let request = self
            .client
            .post(self.tags_url.clone())
            .header("content-type", "application/json")
            .body(body);
        let (outcome, delivery, latency, problem) = self
            .exchange(Endpoint::Tags, request, |status, _| {
                if status == 204 {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            })
            .await;
        self.permits.add_permits(1);
        let mut state = self.state();
        if outcome != Outcome::Correct {
            state.poisoned_cookies.insert(tag.cookie);
            state.poisoned_minutes.insert(n / TAGS_PER_MINUTE);
            if delivery == Delivery::Refused {
                state.fates.refused.insert(n);
            } else {
                state.fates.unknown.insert(n);
            }
        }
        let now = Instant::now();
        state.acks.done(n, now);
        let at = now.duration_since(self.started);
        state.stats[0].record(
            outcome,
            at,
            latency,
            problem.map(|p| format!("tag {n}: {p}")),
        );
    }

    /// Sends `request` with the endpoint's client timeout, and judges the
    /// answer with `check(status, body)`.
    async fn exchange(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
        check: impl FnOnce(u16, &[u8]) -> Result<(), String>,
    ) -> (Outcome, Delivery, Duration, Option<String>) {
        let start = Instant::now();
        let timeout = self.plan.timeouts[endpoint as usize];
        let answer = tokio::time::timeout(timeout, async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        })
        .await;
        let latency = start.elapsed();
        match answer {
            Err(_) => (
                Outcome::TimedOut,
                Delivery::Unknown,
                latency,
                Some(format!("no answer within {timeout:?}")),
            ),
            Ok(Err(err)) => (
                Outcome::Error,
                // A connection never made carried no request.
                if err.is_connect() {
                    Delivery::Refused
                } else {
                    Delivery::Unknown
                },
                latency,
                Some(err.to_string()),
            ),
            Ok(Ok((status, body))) if !(200..300).contains(&status) => (
                Outcome::Error,
                Delivery::Refused,
                latency,
                Some(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )),
            ),
            Ok(Ok((status, body))) => match check(status, &body) {
                Ok(()) => (Outcome::Correct, Delivery::Answered, latency, None),
                Err(diff) => (Outcome::Wrong, Delivery::Answered, latency, Some(diff)),
            },
        }
    }

    /// Waits out the freshness window, so that the query asks about what was
    /// acknowledged when it was scheduled (queries keep the pace of the tags
    /// instead of bunching up), then until `choose` finds something settled to
    /// ask about; gives up after `patience` more (the query is then not made,
    /// and not counted).
    async fn when_settled<T>(
        &self,
        freshness: Duration,
        patience: Duration,
        mut choose: impl FnMut(&State, Instant) -> Option<T>,
    ) -> Option<T> {
        tokio::time::sleep(freshness).await;
        let deadline = Instant::now() + patience;
        loop {
            let now = Instant::now();
            if let Some(choice) = choose(&self.state(), now) {
                return Some(choice);
            }
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn profile_query(self: Arc<Self>, q: u64) {
        let stream = self.stream;
        let seed = self.plan.seed;
        let freshness = self.plan.profile_freshness;
        let chosen = self
            .when_settled(freshness, Duration::from_secs(1), |state, now| {
                let settled = state.acks.settled(freshness, now);
                choose_profile(&stream, seed, q, settled, state)
            })
            .await;
        let Some(check) = chosen else { return };
        // Up to 400 tags for a busy cookie: off the async workers, which
        // time every other request in flight.
        let body_check = check.clone();
        let Ok(expected) = tokio::task::spawn_blocking(move || {
            let mut expected = body_check.expected_body(&stream);
            if q % WRONG_DEBUG_BODY_EVERY == 3 {
                expected.cookie = "deliberately wrong debug body".into();
            }
            serde_json::to_string(&expected).unwrap_or_default()
        })
        .await
        else {
            return;
        };
        let mut url = format!(
            "{}/user_profiles/{}?time_range={}_{}",
            self.plan.target,
            crate::stream::Tag::cookie_name(check.cookie),
            &allezon_core::time::format_tag_time(check.from_ms)[..23],
            &allezon_core::time::format_tag_time(check.to_ms)[..23],
        );
        if let Some(limit) = check.limit {
            url.push_str(&format!("&limit={limit}"));
        }
        let Ok(permit) = self.permits.acquire().await else {
            return;
        };
        // Debug mode: the expected answer rides along as the body.
        let request = self.client.post(&url).body(expected);
        let (outcome, _, latency, problem) = self
            .exchange(Endpoint::Profiles, request, |_, body| {
                let answer: Value =
                    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
                let unsettled = self.state().model.unsettled(&check);
                check.verify(&stream, &answer, unsettled)
            })
            .await;
        drop(permit);
        let at = self.started.elapsed();
        self.state().stats[1].record(outcome, at, latency, problem.map(|p| format!("{url}: {p}")));
    }

    async fn aggregate_query(self: Arc<Self>, q: u64) {
        let stream = self.stream;
        let seed = self.plan.seed;
        let freshness = self.plan.aggregate_freshness;
        let chosen = self
            .when_settled(freshness, Duration::from_secs(1), |state, now| {
                let settled = state.acks.settled(freshness, now);
                choose_aggregate(&stream, seed, q, settled, state)
            })
            .await;
        let Some(check) = chosen else { return };
        // Brute force over up to 3.6 million tags: off the async workers, or
        // the tool's own sends would stall and time out.
        let query = check.query_string();
        let minutes = Arc::clone(&self.minutes);
        let Ok(expected) =
            tokio::task::spawn_blocking(move || check.expected(&stream, &minutes)).await
        else {
            return;
        };
        let url = format!("{}/aggregates?{query}", self.plan.target);
        let Ok(permit) = self.permits.acquire().await else {
            return;
        };
        let mut debug_body = expected.clone();
        if q % WRONG_DEBUG_BODY_EVERY == 3 {
            debug_body["rows"] = serde_json::json!([]);
        }
        let request = self.client.post(&url).body(debug_body.to_string());
        let (outcome, _, latency, problem) = self
            .exchange(Endpoint::Aggregates, request, |_, body| {
                let answer: Value =
                    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
                if answer == expected {
                    Ok(())
                } else {
                    Err(first_diff(&expected, &answer))
                }
            })
            .await;
        drop(permit);
        let at = self.started.elapsed();
        self.state().stats[2].record(outcome, at, latency, problem.map(|p| format!("{url}: {p}")));
    }
}

/// A profile query about a settled tag's cookie, with a varied range and
/// limit; `None` while nothing is settled.
fn choose_profile(
    stream: &Stream,
    seed: u64,
    q: u64,
    settled: u64,
    state: &State,
) -> Option<ProfileCheck> {
    if settled == 0 {
        return None;
    }
    let r = |k: u64| mix(seed ^ 0x5052_4f46 ^ q.wrapping_mul(16).wrapping_add(k));
    let settled_ms = START_MS + settled as i64;
    // One query in eight asks for a whole day of one of the ten hottest
    // cookies: past 200 tags per action, the keep-the-newest-200 rule alone
    // decides that answer.
    if r(5) % 8 == 0 {
        let cookie = (r(6) % 10) as u32;
        if state.poisoned_cookies.contains(&cookie) {
            return None;
        }
        let limit = [None, Some(200), Some(1_000)][(r(7) % 3) as usize];
        let from_ms = settled_ms - 86_400_000;
        return Some(
            state
                .model
                .profile_check(cookie, from_ms, settled_ms, limit, settled),
        );
    }
    // Mostly recent tags, so hot cookies and fresh data get asked about.
    let window = settled.min(200_000);
    let pick = settled - 1 - r(0) % window;
    let tag = stream.tag(pick);
    if state.poisoned_cookies.contains(&tag.cookie) {
        return None;
    }
    let width = [1i64, 5, 50, 1_000, 60_000, 600_000, 86_400_000][(r(1) % 7) as usize];
    // One range in four ends exactly on the chosen tag, which a half-open
    // range excludes: a server treating the end as inclusive gets caught.
    let to_ms = if r(4) % 4 == 0 {
        tag.time_ms()
    } else {
        (tag.time_ms() + 1 + (r(2) % width as u64) as i64).min(settled_ms)
    };
    let from_ms = to_ms - width;
    let limit = [
        None,
        None,
        Some(1),
        Some(5),
        Some(50),
        Some(200),
        Some(1_000),
    ][(r(3) % 7) as usize];
    Some(
        state
            .model
            .profile_check(tag.cookie, from_ms, to_ms, limit, settled),
    )
}

/// An aggregate query over settled whole minutes, with filters taken from a
/// tag in range so that most answers are not all zeros.
fn choose_aggregate(
    stream: &Stream,
    seed: u64,
    q: u64,
    settled: u64,
    state: &State,
) -> Option<AggregateCheck> {
    let minutes = settled / TAGS_PER_MINUTE;
    if minutes == 0 {
        return None;
    }
    let r = |k: u64| mix(seed ^ 0x4147_4752 ^ q.wrapping_mul(16).wrapping_add(k));
    let len = [1u64, 1, 2, 5, 10, 10, 30, 60][(r(0) % 8) as usize].min(minutes);
    let from = minutes - len - r(1) % (minutes - len + 1);
    let to = from + len;
    if (from..to).any(|m| state.poisoned_minutes.contains(&m)) {
        return None;
    }
    let sample = stream.tag(from * TAGS_PER_MINUTE + r(2) % (len * TAGS_PER_MINUTE));
    let filters = r(3) % 8;
    let aggregates = match r(4) % 4 {
        0 => vec![true],
        1 => vec![false],
        2 => vec![true, false],
        _ => vec![false, true],
    };
    Some(AggregateCheck {
        buy: r(5) % 2 == 0,
        from_minute: from,
        to_minute: to,
        aggregates,
        origin: (filters & 1 != 0).then_some(sample.origin),
        brand: (filters & 2 != 0).then_some(sample.brand),
        category: (filters & 4 != 0).then_some(sample.category),
    })
}

/// The first place two JSON answers differ, briefly.
fn first_diff(expected: &Value, got: &Value) -> String {
    match (expected, got) {
        (Value::Object(e), Value::Object(g)) => {
            for (k, ev) in e {
                match g.get(k) {
                    Some(gv) if gv == ev => {}
                    Some(gv) => return format!("{k}: {}", first_diff(ev, gv)),
                    None => return format!("missing `{k}`"),
                }
            }
            "extra fields".to_owned()
        }
        (Value::Array(e), Value::Array(g)) => {
            for (i, (ev, gv)) in e.iter().zip(g).enumerate() {
                if ev != gv {
                    return format!("[{i}]: {}", first_diff(ev, gv));
                }
            }
            format!("{} items, expected {}", g.len(), e.len())
        }
        _ => format!("{got}, expected {expected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_lags_the_acknowledged_prefix_by_the_freshness_window() {
        let mut acks = Acks {
            keep_for: Duration::from_secs(60),
            ..Acks::default()
        };
        let t0 = Instant::now();
        acks.done(1, t0);
        assert_eq!(acks.prefix, 0, "tag 0 is still out");
        acks.done(0, t0);
        assert_eq!(acks.prefix, 2);
        acks.done(2, t0 + Duration::from_secs(5));
        assert_eq!(
            acks.settled(Duration::from_secs(10), t0 + Duration::from_secs(9)),
            0
        );
        assert_eq!(
            acks.settled(Duration::from_secs(10), t0 + Duration::from_secs(11)),
            2
        );
        assert_eq!(
            acks.settled(Duration::from_secs(10), t0 + Duration::from_secs(16)),
            3
        );
    }
}
