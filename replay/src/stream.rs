//! The deterministic tag stream: tag `n` of seed `s` is always the same tag.
//!
//! Event time starts at 2022-03-01T00:00:00.000Z and advances exactly 1 ms
//! per tag, whatever the sending rate, so minute `m` of the stream holds tags
//! `60_000 m .. 60_000 (m + 1)`. Cardinalities follow the contract: about a
//! million cookies with a strong skew (so that many pass 200 tags), 100
//! countries, 1,000 origins, 250 brands, 67 categories.

use serde::Serialize;
use serde_json::{Value, json};

/// 2022-03-01T00:00:00.000Z in milliseconds since the epoch.
pub const START_MS: i64 = 1_646_092_800_000;
pub const TAGS_PER_MINUTE: u64 = 60_000;
pub const COOKIES: u64 = 1_000_000;
pub const COUNTRIES: u64 = 100;
pub const ORIGINS: u64 = 1_000;
pub const BRANDS: u64 = 250;
pub const CATEGORIES: u64 = 67;

/// The numeric identity of a tag; strings are derived on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub n: u64,
    pub cookie: u32,
    pub buy: bool,
    pub device: u8,
    pub country: u8,
    pub origin: u16,
    pub brand: u16,
    pub category: u8,
    pub product: u32,
    pub price: i32,
}

#[derive(Debug, Clone, Copy)]
pub struct Stream {
    seed: u64,
}

/// SplitMix64: a fast, well-mixed hash of a counter. The tool draws every
/// choice from it, so a seed fixes the whole run.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform float in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Stream {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    pub fn tag(&self, n: u64) -> Tag {
        let h = |k: u64| mix(self.seed ^ mix(n.wrapping_mul(8).wrapping_add(k)));
        // Cubing a uniform draw skews towards low ids: cookie 0 gets about 1%
        // of all tags, the first thousand cookies about 10%.
        let cookie = (unit(h(0)).powi(3) * COOKIES as f64) as u32;
        let r = h(1);
        Tag {
            n,
            cookie,
            buy: r % 5 == 0,
            device: ((r >> 8) % 3) as u8,
            country: ((r >> 16) % COUNTRIES) as u8,
            origin: (h(2) % ORIGINS) as u16,
            brand: ((h(3) % BRANDS) as f64 * unit(h(4))) as u16,
            category: (h(5) % CATEGORIES) as u8,
            product: (h(6) % 100_000) as u32,
            // Prices up to 100,000.00 in cents, a few negative (refunds).
            price: ((h(7) % 10_000_001) as i64 - if h(7) % 97 == 0 { 10_000_000 } else { 0 })
                as i32,
        }
    }
}

impl Tag {
    pub fn time_ms(&self) -> i64 {
        START_MS + self.n as i64
    }

    pub fn minute(&self) -> i64 {
        self.time_ms().div_euclid(60_000)
    }

    pub fn action(&self) -> &'static str {
        if self.buy { "BUY" } else { "VIEW" }
    }

    pub fn cookie_name(cookie: u32) -> String {
        format!("cookie{cookie:014}")
    }

    pub fn origin_name(&self) -> String {
        format!("CAMPAIGN_{}", self.origin)
    }

    pub fn brand_name(&self) -> String {
        format!("brand_{}", self.brand)
    }

    pub fn category_name(&self) -> String {
        format!("category_{}", self.category)
    }

    /// The JSON a client sends: `product_id` as a number, and `time` without
    /// the fraction when the milliseconds are zero, as real clients do.
    pub fn to_json(&self) -> Value {
        let device = ["PC", "MOBILE", "TV"][usize::from(self.device)];
        json!({
            "time": self.time_text(),
            "cookie": Self::cookie_name(self.cookie),
            "country": format!("C{:02}", self.country),
            "device": device,
            "action": self.action(),
            "origin": self.origin_name(),
            "product_info": {
                "product_id": self.product,
                "brand_id": self.brand_name(),
                "category_id": self.category_name(),
                "price": self.price,
            }
        })
    }

    fn time_text(&self) -> String {
        let full = allezon_core::time::format_tag_time(self.time_ms());
        if self.time_ms() % 1000 == 0 {
            format!("{}Z", &full[..19])
        } else {
            full
        }
    }

    /// The tag as a correct server gives it back: time in millisecond form.
    pub fn to_answer_json(&self) -> Value {
        let mut v = self.to_json();
        v["time"] = json!(allezon_core::time::format_tag_time(self.time_ms()));
        v
    }

    /// [`Tag::to_json`] as the request body, serialized straight from the
    /// numbers: the tool sends 10,000 of these a second, and building a
    /// `Value` map first took a tenth of its CPU, which it shares with the
    /// server under test.
    pub fn body(&self) -> String {
        serde_json::to_string(&self.wire(self.time_text())).unwrap_or_default()
    }

    /// [`Tag::to_answer_json`], for serializing.
    pub fn answer(&self) -> WireTag {
        self.wire(allezon_core::time::format_tag_time(self.time_ms()))
    }

    fn wire(&self, time: String) -> WireTag {
        WireTag {
            time,
            cookie: Self::cookie_name(self.cookie),
            country: format!("C{:02}", self.country),
            device: ["PC", "MOBILE", "TV"][usize::from(self.device)],
            action: self.action(),
            origin: self.origin_name(),
            product_info: WireProduct {
                product_id: self.product,
                brand_id: self.brand_name(),
                category_id: self.category_name(),
                price: self.price,
            },
        }
    }
}

/// A tag's JSON, field for field as [`Tag::to_json`] writes it.
#[derive(Debug, Serialize)]
pub struct WireTag {
    time: String,
    cookie: String,
    country: String,
    device: &'static str,
    action: &'static str,
    origin: String,
    product_info: WireProduct,
}

#[derive(Debug, Serialize)]
struct WireProduct {
    product_id: u32,
    brand_id: String,
    category_id: String,
    price: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bodies_are_the_json_values() {
        let stream = Stream::new(3);
        for n in [0, 1, 60_000, 123_457] {
            let tag = stream.tag(n);
            let body: Value = serde_json::from_str(&tag.body()).unwrap();
            assert_eq!(body, tag.to_json());
            let answer = serde_json::to_value(tag.answer()).unwrap();
            assert_eq!(answer, tag.to_answer_json());
        }
    }

    #[test]
    fn the_stream_is_deterministic_and_skewed() {
        let s = Stream::new(7);
        assert_eq!(s.tag(12_345), Stream::new(7).tag(12_345));
        assert_ne!(s.tag(12_345), Stream::new(8).tag(12_345));
        let hot = (0..100_000).filter(|n| s.tag(*n).cookie == 0).count();
        assert!(hot > 400, "cookie 0 got {hot} of 100,000 tags");
        let buys = (0..100_000).filter(|n| s.tag(*n).buy).count();
        assert!((15_000..25_000).contains(&buys));
    }

    #[test]
    fn times_follow_the_index() {
        let t = Stream::new(1).tag(60_000);
        assert_eq!(t.to_json()["time"], "2022-03-01T00:01:00Z");
        assert_eq!(
            Stream::new(1).tag(60_001).to_json()["time"],
            "2022-03-01T00:01:00.001Z"
        );
        assert_eq!(t.to_answer_json()["time"], "2022-03-01T00:01:00.000Z");
        assert_eq!(t.minute() - Stream::new(1).tag(0).minute(), 1);
    }
}
