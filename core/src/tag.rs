//! The user tag: parsed from the client's JSON with errors that name the
//! field, written back in the contract's shape, and converted to and from the
//! protobuf message that crosses gRPC and the event log.

use std::fmt;

use allezon_proto::v1 as pb;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::time::{format_tag_time, parse_tag_time};

/// Longest cookie we store. Storage keys carry the cookie's length in one byte.
pub const MAX_COOKIE_LEN: usize = 255;
/// Longest value accepted for the other string fields.
pub const MAX_FIELD_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Device {
    Pc,
    Mobile,
    Tv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    View,
    Buy,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::View, Action::Buy];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "VIEW",
            Action::Buy => "BUY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "VIEW" => Some(Action::View),
            "BUY" => Some(Action::Buy),
            _ => None,
        }
    }
}

/// `product_id` in the form the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProductId {
    Text(String),
    Number(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct ProductInfo {
    pub product_id: ProductId,
    pub brand_id: String,
    pub category_id: String,
    pub price: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct UserTag {
    #[serde(rename = "time", with = "tag_time")]
    pub time_ms: i64,
    pub cookie: String,
    pub country: String,
    pub device: Device,
    pub action: Action,
    pub origin: String,
    pub product_info: ProductInfo,
}

impl UserTag {
    /// Parses one tag from a request body. The error names the offending field
    /// (`product_info.price`), or `body` when the JSON itself is broken.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        // serde would also build the struct from a JSON array; the contract
        // only knows objects.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(Error::invalid("body", "expected a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let tag: UserTag = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            // Broken JSON is the body's fault, whichever field it broke in.
            let broken = err.inner().is_syntax() || err.inner().is_eof();
            let field = if path == "." || broken {
                "body"
            } else {
                path.as_str()
            };
            Error::invalid(field, strip_position(&err.inner().to_string()))
        })?;
        de.end()
            .map_err(|err| Error::invalid("body", strip_position(&err.to_string())))?;
        tag.validate()?;
        Ok(tag)
    }

    fn validate(&self) -> Result<()> {
        if self.cookie.is_empty() || self.cookie.len() > MAX_COOKIE_LEN {
            return Err(Error::invalid(
                "cookie",
                format_args!("must be 1 to {MAX_COOKIE_LEN} bytes"),
            ));
        }
        for (field, value) in [
            ("country", &self.country),
            ("origin", &self.origin),
            ("product_info.brand_id", &self.product_info.brand_id),
            ("product_info.category_id", &self.product_info.category_id),
        ] {
            if value.len() > MAX_FIELD_LEN {
                return Err(Error::invalid(
                    field,
                    format_args!("longer than {MAX_FIELD_LEN} bytes"),
                ));
            }
        }
        if let ProductId::Text(id) = &self.product_info.product_id
            && id.len() > MAX_FIELD_LEN
        {
            return Err(Error::invalid(
                "product_info.product_id",
                format_args!("longer than {MAX_FIELD_LEN} bytes"),
            ));
        }
        Ok(())
    }
}

/// serde_json appends " at line 1 column 42"; the field path says more.
fn strip_position(message: &str) -> &str {
    message
        .find(" at line ")
        .map_or(message, |at| &message[..at])
}

mod tag_time {
    use super::*;

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format_tag_time(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
        struct TimeVisitor;
        impl Visitor<'_> for TimeVisitor {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a UTC datetime string like 2022-03-01T00:00:00.000Z")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<i64, E> {
                parse_tag_time(v).map_err(E::custom)
            }
        }
        d.deserialize_str(TimeVisitor)
    }
}

impl Serialize for ProductId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ProductId::Text(text) => s.serialize_str(text),
            ProductId::Number(n) => s.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for ProductId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ProductIdVisitor;
        impl Visitor<'_> for ProductIdVisitor {
            type Value = ProductId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a 64-bit integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ProductId, E> {
                Ok(ProductId::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<ProductId, E> {
                Ok(ProductId::Text(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<ProductId, E> {
                Ok(ProductId::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<ProductId, E> {
                i64::try_from(v)
                    .map(ProductId::Number)
                    .map_err(|_| E::custom("integer out of the 64-bit signed range"))
            }
        }
        d.deserialize_any(ProductIdVisitor)
    }
}

impl From<Device> for pb::Device {
    fn from(d: Device) -> Self {
        match d {
            Device::Pc => pb::Device::Pc,
            Device::Mobile => pb::Device::Mobile,
            Device::Tv => pb::Device::Tv,
        }
    }
}

impl From<Action> for pb::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::View => pb::Action::View,
            Action::Buy => pb::Action::Buy,
        }
    }
}

impl TryFrom<i32> for Action {
    type Error = Error;
    fn try_from(value: i32) -> Result<Self> {
        match pb::Action::try_from(value) {
            Ok(pb::Action::View) => Ok(Action::View),
            Ok(pb::Action::Buy) => Ok(Action::Buy),
            _ => Err(Error::invalid("action", "must be VIEW or BUY")),
        }
    }
}

impl From<UserTag> for pb::UserTag {
    fn from(tag: UserTag) -> Self {
        let info = tag.product_info;
        pb::UserTag {
            time_ms: tag.time_ms,
            cookie: tag.cookie,
            country: tag.country,
            device: pb::Device::from(tag.device).into(),
            action: pb::Action::from(tag.action).into(),
            origin: tag.origin,
            product_info: Some(pb::ProductInfo {
                product_id: Some(match info.product_id {
                    ProductId::Text(t) => pb::product_info::ProductId::ProductIdText(t),
                    ProductId::Number(n) => pb::product_info::ProductId::ProductIdNumber(n),
                }),
                brand_id: info.brand_id,
                category_id: info.category_id,
                price: info.price,
            }),
        }
    }
}

impl TryFrom<pb::UserTag> for UserTag {
    type Error = Error;

    /// Checks what protobuf cannot: enums set and the product present.
    fn try_from(tag: pb::UserTag) -> Result<Self> {
        let device = match pb::Device::try_from(tag.device) {
            Ok(pb::Device::Pc) => Device::Pc,
            Ok(pb::Device::Mobile) => Device::Mobile,
            Ok(pb::Device::Tv) => Device::Tv,
            _ => return Err(Error::invalid("device", "must be PC, MOBILE or TV")),
        };
        let action = Action::try_from(tag.action)?;
        let info = tag
            .product_info
            .ok_or_else(|| Error::invalid("product_info", "missing"))?;
        let product_id = match info.product_id {
            Some(pb::product_info::ProductId::ProductIdText(t)) => ProductId::Text(t),
            Some(pb::product_info::ProductId::ProductIdNumber(n)) => ProductId::Number(n),
            None => return Err(Error::invalid("product_info.product_id", "missing")),
        };
        let tag = UserTag {
            time_ms: tag.time_ms,
            cookie: tag.cookie,
            country: tag.country,
            device,
            action,
            origin: tag.origin,
            product_info: ProductInfo {
                product_id,
                brand_id: info.brand_id,
                category_id: info.category_id,
                price: info.price,
            },
        };
        tag.validate()?;
        Ok(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = r#"{"time":"2022-03-22T12:15:00.000Z","cookie":"c8d2f1a0b3e4d5c6f7a8","country":"PL","device":"PC","action":"VIEW","origin":"CAMPAIGN_417","product_info":{"product_id":"prod_123456","brand_id":"brand_12","category_id":"cat_5","price":12345}}"#;

    #[test]
    fn writes_back_what_it_read() {
        let tag = UserTag::from_json(SAMPLE.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&tag).unwrap(), SAMPLE);
    }

    #[test]
    fn keeps_a_numeric_product_id_numeric() {
        let body = SAMPLE.replace(r#""prod_123456""#, "12486");
        let tag = UserTag::from_json(body.as_bytes()).unwrap();
        assert_eq!(tag.product_info.product_id, ProductId::Number(12486));
        assert_eq!(serde_json::to_string(&tag).unwrap(), body);
    }

    #[test]
    fn normalises_whole_second_times() {
        let body = SAMPLE.replace("12:15:00.000Z", "12:15:01Z");
        let tag = UserTag::from_json(body.as_bytes()).unwrap();
        assert!(
            serde_json::to_string(&tag)
                .unwrap()
                .contains("2022-03-22T12:15:01.000Z")
        );
    }

    fn error_for(body: &str) -> String {
        UserTag::from_json(body.as_bytes())
            .unwrap_err()
            .message()
            .to_owned()
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (SAMPLE.replace(r#""PC""#, r#""FRIDGE""#), "`device`"),
            (SAMPLE.replace(r#""VIEW""#, r#""CLICK""#), "`action`"),
            (
                SAMPLE.replace("12345", "2147483648"),
                "`product_info.price`",
            ),
            (SAMPLE.replace("12345", "12.5"), "`product_info.price`"),
            (SAMPLE.replace(".000Z", ""), "`time`"),
            (SAMPLE.replace(r#""PL""#, "7"), "`country`"),
            (
                SAMPLE.replace(r#""prod_123456""#, "1.5"),
                "`product_info.product_id`",
            ),
            (
                SAMPLE.replace(r#""prod_123456""#, "null"),
                "`product_info.product_id`",
            ),
            (
                SAMPLE.replace(r#""c8d2f1a0b3e4d5c6f7a8""#, r#""""#),
                "`cookie`",
            ),
            (SAMPLE.replace(r#""origin":"CAMPAIGN_417","#, ""), "origin"),
            (SAMPLE.replace(r#""brand_id":"brand_12","#, ""), "brand_id"),
            (format!("{SAMPLE}x"), "`body`"),
            ("[1]".to_owned(), "`body`"),
            ("".to_owned(), "`body`"),
        ];
        for (body, field) in cases {
            let message = error_for(&body);
            assert!(message.contains(field), "{body}: {message}");
        }
    }

    #[test]
    fn price_accepts_the_whole_int32_range() {
        for price in [i32::MIN, -1, 0, i32::MAX] {
            let body = SAMPLE.replace("12345", &price.to_string());
            assert_eq!(
                UserTag::from_json(body.as_bytes())
                    .unwrap()
                    .product_info
                    .price,
                price
            );
        }
    }

    fn arb_tag() -> impl Strategy<Value = UserTag> {
        (
            crate::time::MIN_MS..=crate::time::MAX_MS,
            "[a-zA-Z0-9]{1,40}",
            "\\PC{0,8}",
            prop_oneof![Just(Device::Pc), Just(Device::Mobile), Just(Device::Tv)],
            prop_oneof![Just(Action::View), Just(Action::Buy)],
            "\\PC{0,20}",
            prop_oneof![
                "\\PC{0,20}".prop_map(ProductId::Text),
                any::<i64>().prop_map(ProductId::Number)
            ],
            ("\\PC{0,20}", "\\PC{0,20}", any::<i32>()),
        )
            .prop_map(
                |(time_ms, cookie, country, device, action, origin, product_id, (b, c, price))| {
                    UserTag {
                        time_ms,
                        cookie,
                        country,
                        device,
                        action,
                        origin,
                        product_info: ProductInfo {
                            product_id,
                            brand_id: b,
                            category_id: c,
                            price,
                        },
                    }
                },
            )
    }

    proptest! {
        // Parsers of client input: cheap cases, so many of them (next to
        // the cargo-fuzz targets in fuzz/).
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn json_round_trips(tag in arb_tag()) {
            let json = serde_json::to_vec(&tag).unwrap();
            prop_assert_eq!(UserTag::from_json(&json).unwrap(), tag);
        }

        #[test]
        fn protobuf_round_trips(tag in arb_tag()) {
            let back = UserTag::try_from(pb::UserTag::from(tag.clone())).unwrap();
            prop_assert_eq!(back, tag);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = UserTag::from_json(&body);
        }
    }
}
