//! Key layout of the embedded profile store.
//!
//! `[cookie length: u8][cookie][action: u8][time: u64 BE, sign flipped][hash: u64 BE]`
//!
//! Keys of one cookie and action are contiguous and sorted by event time, so
//! "newest first" is a reverse prefix scan, whatever order tags arrived in.
//! The hash of the encoded tag separates tags with the same millisecond and
//! makes a retried append of the same tag land on the same key.

use allezon_core::Action;

pub const HASH_LEN: usize = 8;
pub const TIME_LEN: usize = 8;

/// The common prefix of every key of `cookie` and `action`.
pub fn prefix(cookie: &str, action: Action) -> Vec<u8> {
    let mut key = Vec::with_capacity(cookie.len() + 2 + TIME_LEN + HASH_LEN);
    // Callers validated the cookie to at most 255 bytes.
    key.push(u8::try_from(cookie.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(cookie.as_bytes());
    key.push(match action {
        Action::View => 1,
        Action::Buy => 2,
    });
    key
}

/// The first key past every key starting with `prefix` (a [`prefix`]:
/// its last byte is the action, never 0xff).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    end
}

pub fn tag_key(cookie: &str, action: Action, time_ms: i64, hash: u64) -> Vec<u8> {
    let mut key = prefix(cookie, action);
    key.extend_from_slice(&encode_time(time_ms));
    key.extend_from_slice(&hash.to_be_bytes());
    key
}

/// Flipping the sign bit makes big-endian byte order match numeric order.
pub fn encode_time(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The event time of a full key, read without decoding the value.
pub fn time_of(key: &[u8]) -> Option<i64> {
    let start = key.len().checked_sub(TIME_LEN + HASH_LEN)?;
    let bytes: [u8; 8] = key.get(start..start + TIME_LEN)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// FNV-1a: stable across builds and platforms, unlike `DefaultHasher`, which
/// matters because the hash is part of keys on disk.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_sort_by_time(a in any::<i64>(), b in any::<i64>(), ha in any::<u64>(), hb in any::<u64>()) {
            let ka = tag_key("cookie", Action::View, a, ha);
            let kb = tag_key("cookie", Action::View, b, hb);
            if a < b {
                prop_assert!(ka < kb);
            }
            prop_assert_eq!(time_of(&ka), Some(a));
        }

        #[test]
        fn cookies_never_share_a_prefix(a in "[a-z]{1,8}", b in "[a-z]{1,8}", t in any::<i64>()) {
            prop_assume!(a != b);
            let key = tag_key(&a, Action::Buy, t, 0);
            prop_assert!(!key.starts_with(&prefix(&b, Action::Buy)));
            prop_assert!(!key.starts_with(&prefix(&a, Action::View)));
        }
    }
}
