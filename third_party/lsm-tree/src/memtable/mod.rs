// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

use crate::key::InternalKey;
use crate::{
    value::{InternalValue, SeqNo, UserValue},
    ValueType,
};
use crossbeam_skiplist::SkipMap;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, AtomicU64};

pub use crate::tree::inner::MemtableId;

/// The memtable serves as an intermediary, ephemeral, sorted storage for new items
///
/// When the Memtable exceeds some size, it should be flushed to a table.
pub struct Memtable {
    #[doc(hidden)]
    pub id: MemtableId,

    /// The actual content, stored in a lock-free skiplist.
    #[doc(hidden)]
    pub items: SkipMap<InternalKey, UserValue>,

    /// Approximate active memtable size.
    ///
    /// If this grows too large, a flush is triggered.
    pub(crate) approximate_size: AtomicU64,

    /// Highest encountered sequence number.
    ///
    /// This is used so that `get_highest_seqno` has O(1) complexity.
    pub(crate) highest_seqno: AtomicU64,

    pub(crate) requested_rotation: AtomicBool,

    /// Allezon's patch: the user keys inserted, as a Bloom filter, so that a
    /// point read of a key that was never inserted skips the skiplist search.
    keys: KeyFilter,
}

/// Allezon's patch: a Bloom filter of user keys (two bits per key in
/// [`KeyFilter::BITS`]), filled by [`Memtable::insert`] before the item goes
/// into the skiplist.
///
/// A skiplist search follows about twenty nodes, and compares the key with
/// each: when keys share a long prefix (one cookie's profile entries), every
/// comparison leaves the node for the key's bytes on the heap, a cache miss.
/// Allezon asks for every incoming tag whether it is already stored; on a
/// replayed shop's stream that search took a third of the thread that
/// writes tags. A filter answers most such misses with two loads.
///
/// Never a false negative: every inserted key has its bits set, and bits are
/// never cleared. A reader that can see an item (its seqno published after
/// the insert) sees the bits set before it. False positives only cost the
/// search the read did before: at 100,000 keys (a 16 MiB memtable of
/// profile entries) about 1 % of misses.
struct KeyFilter {
    words: Box<[AtomicU64]>,
}

impl KeyFilter {
    /// 2 Mi bits, 256 KiB per memtable, allocated zeroed (pages are
    /// committed as bits land in them).
    const BITS: u64 = 1 << 21;

    fn new() -> Self {
        Self {
            words: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The two bits of `key`: 21 bits each, from one 64-bit hash.
    fn bits(key: &[u8]) -> [u64; 2] {
        let hash = xxhash_rust::xxh3::xxh3_64(key);
        [hash % Self::BITS, (hash >> 21) % Self::BITS]
    }

    fn word(&self, bit: u64) -> Option<&AtomicU64> {
        // BITS / 64 words, so the index fits.
        #[expect(clippy::cast_possible_truncation)]
        self.words.get((bit / 64) as usize)
    }

    fn insert(&self, key: &[u8]) {
        for bit in Self::bits(key) {
            if let Some(word) = self.word(bit) {
                word.fetch_or(1 << (bit % 64), std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn may_contain(&self, key: &[u8]) -> bool {
        Self::bits(key).iter().all(|&bit| {
            self.word(bit).is_none_or(|word| {
                word.load(std::sync::atomic::Ordering::Relaxed) & (1 << (bit % 64)) != 0
            })
        })
    }
}

impl Memtable {
    /// Returns the memtable ID.
    pub fn id(&self) -> MemtableId {
        self.id
    }

    /// Returns `true` if the memtable was already flagged for rotation.
    pub fn is_flagged_for_rotation(&self) -> bool {
        self.requested_rotation
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Flags the memtable as requested for rotation.
    pub fn flag_rotated(&self) {
        self.requested_rotation
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    #[doc(hidden)]
    #[must_use]
    pub fn new(id: MemtableId) -> Self {
        Self {
            id,
            items: SkipMap::default(),
            approximate_size: AtomicU64::default(),
            highest_seqno: AtomicU64::default(),
            requested_rotation: AtomicBool::default(),
            keys: KeyFilter::new(),
        }
    }

    /// Creates an iterator over all items.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = InternalValue> + '_ {
        self.items.iter().map(|entry| InternalValue {
            key: entry.key().clone(),
            value: entry.value().clone(),
        })
    }

    /// Creates an iterator over a range of items.
    pub(crate) fn range<'a, R: RangeBounds<InternalKey> + 'a>(
        &'a self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = InternalValue> + 'a {
        self.items.range(range).map(|entry| InternalValue {
            key: entry.key().clone(),
            value: entry.value().clone(),
        })
    }

    /// Returns the item by key if it exists.
    ///
    /// The item with the highest seqno will be returned, if `seqno` is None.
    #[doc(hidden)]
    pub fn get(&self, key: &[u8], seqno: SeqNo) -> Option<InternalValue> {
        if seqno == 0 {
            return None;
        }

        // Allezon's patch: a key never inserted needs no search.
        if !self.keys.may_contain(key) {
            return None;
        }

        // NOTE: This range start deserves some explanation...
        // InternalKeys are multi-sorted by 2 categories: user_key and Reverse(seqno). (tombstone doesn't really matter)
        // We search for the lowest entry that is greater or equal the user's prefix key
        // and has the seqno (or lower) we want (because the seqno is stored in reverse order)
        //
        // Example: We search for "abc"
        //
        // key -> seqno
        //
        // a   -> 7
        // abc -> 5 <<< This is the lowest key (highest seqno) that matches the key with seqno=None
        // abc -> 4
        // abc -> 3 <<< If searching for abc and seqno=4, we would get this
        // abcdef -> 6
        // abcdef -> 5
        //
        let lower_bound = InternalKey::new(key, seqno - 1, ValueType::Value);

        let mut iter = self
            .items
            .range(lower_bound..)
            .take_while(|entry| &*entry.key().user_key == key);

        iter.next().map(|entry| InternalValue {
            key: entry.key().clone(),
            value: entry.value().clone(),
        })
    }

    /// Gets approximate size of memtable in bytes.
    pub fn size(&self) -> u64 {
        self.approximate_size
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts the number of items in the memtable.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Returns `true` if the memtable is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Inserts an item into the memtable
    #[doc(hidden)]
    pub fn insert(&self, item: InternalValue) -> (u64, u64) {
        #[expect(
            clippy::expect_used,
            reason = "keys are limited to 16-bit length + values are limited to 32-bit length"
        )]
        let item_size =
            (item.key.user_key.len() + item.value.len() + std::mem::size_of::<InternalValue>())
                .try_into()
                .expect("should fit into u64");

        let size_before = self
            .approximate_size
            .fetch_add(item_size, std::sync::atomic::Ordering::AcqRel);

        // Before the skiplist: whoever can see the item sees its bits.
        self.keys.insert(&item.key.user_key);
        let key = InternalKey::new(item.key.user_key, item.key.seqno, item.key.value_type);
        self.items.insert(key, item.value);

        self.highest_seqno
            .fetch_max(item.key.seqno, std::sync::atomic::Ordering::AcqRel);

        (item_size, size_before + item_size)
    }

    /// Returns the highest sequence number in the memtable.
    pub fn get_highest_seqno(&self) -> Option<SeqNo> {
        if self.is_empty() {
            None
        } else {
            Some(
                self.highest_seqno
                    .load(std::sync::atomic::Ordering::Acquire),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValueType;
    use test_log::test;

    /// Allezon's patch: with the key filter in front, every inserted key
    /// is still found (at every seqno that sees it), and keys never
    /// inserted are not, past the filter's design load.
    #[test]
    fn memtable_key_filter_finds_every_inserted_key() {
        let memtable = Memtable::new(0);
        let key = |i: u32| format!("cookie-with-a-long-shared-prefix-{}", i % 5_000).into_bytes();
        let inserted = 300_000u32;
        for i in 0..inserted {
            let mut k = key(i);
            k.extend_from_slice(&i.to_be_bytes());
            memtable.insert(InternalValue::from_components(
                k,
                i.to_be_bytes(),
                u64::from(i),
                ValueType::Value,
            ));
        }
        for i in 0..inserted {
            let mut k = key(i);
            k.extend_from_slice(&i.to_be_bytes());
            let found = memtable.get(&k, SeqNo::MAX).map(|item| item.value);
            assert_eq!(found.as_deref(), Some(&i.to_be_bytes()[..]), "key {i}");
            assert!(memtable.get(&k, u64::from(i)).is_none(), "not yet visible at {i}");
            assert!(memtable.get(&k, u64::from(i) + 1).is_some(), "visible at {i}");
        }
        for i in inserted..inserted + 100_000 {
            let mut k = key(i);
            k.extend_from_slice(&i.to_be_bytes());
            assert!(memtable.get(&k, SeqNo::MAX).is_none(), "never inserted: {i}");
        }
    }

    /// Allezon's patch: the filter answers most misses on its own, so a
    /// broken filter that lets everything through fails here.
    #[test]
    fn memtable_key_filter_rejects_most_absent_keys() {
        let memtable = Memtable::new(0);
        for i in 0..100_000u32 {
            memtable.insert(InternalValue::from_components(
                i.to_be_bytes(),
                *b"v",
                0,
                ValueType::Value,
            ));
        }
        let passed = (100_000..200_000u32)
            .filter(|i| memtable.keys.may_contain(&i.to_be_bytes()))
            .count();
        assert!(passed < 2_000, "{passed} of 100,000 absent keys passed the filter");
    }

    #[test]
    #[expect(clippy::unwrap_used)]
    fn memtable_mvcc_point_read() {
        let memtable = Memtable::new(0);

        memtable.insert(InternalValue::from_components(
            *b"hello-key-999991",
            *b"hello-value-999991",
            0,
            ValueType::Value,
        ));

        let item = memtable.get(b"hello-key-99999", SeqNo::MAX);
        assert_eq!(None, item);

        let item = memtable.get(b"hello-key-999991", SeqNo::MAX);
        assert_eq!(*b"hello-value-999991", &*item.unwrap().value);

        memtable.insert(InternalValue::from_components(
            *b"hello-key-999991",
            *b"hello-value-999991-2",
            1,
            ValueType::Value,
        ));

        let item = memtable.get(b"hello-key-99999", SeqNo::MAX);
        assert_eq!(None, item);

        let item = memtable.get(b"hello-key-999991", SeqNo::MAX);
        assert_eq!((*b"hello-value-999991-2"), &*item.unwrap().value);

        let item = memtable.get(b"hello-key-99999", 1);
        assert_eq!(None, item);

        let item = memtable.get(b"hello-key-999991", 1);
        assert_eq!((*b"hello-value-999991"), &*item.unwrap().value);

        let item = memtable.get(b"hello-key-99999", 2);
        assert_eq!(None, item);

        let item = memtable.get(b"hello-key-999991", 2);
        assert_eq!((*b"hello-value-999991-2"), &*item.unwrap().value);
    }

    #[test]
    fn memtable_get() {
        let memtable = Memtable::new(0);

        let value =
            InternalValue::from_components(b"abc".to_vec(), b"abc".to_vec(), 0, ValueType::Value);

        memtable.insert(value.clone());

        assert_eq!(Some(value), memtable.get(b"abc", SeqNo::MAX));
    }

    #[test]
    fn memtable_get_highest_seqno() {
        let memtable = Memtable::new(0);

        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            0,
            ValueType::Value,
        ));
        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            1,
            ValueType::Value,
        ));
        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            2,
            ValueType::Value,
        ));
        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            3,
            ValueType::Value,
        ));
        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            4,
            ValueType::Value,
        ));

        assert_eq!(
            Some(InternalValue::from_components(
                b"abc".to_vec(),
                b"abc".to_vec(),
                4,
                ValueType::Value,
            )),
            memtable.get(b"abc", SeqNo::MAX)
        );
    }

    #[test]
    fn memtable_get_prefix() {
        let memtable = Memtable::new(0);

        memtable.insert(InternalValue::from_components(
            b"abc0".to_vec(),
            b"abc".to_vec(),
            0,
            ValueType::Value,
        ));
        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            255,
            ValueType::Value,
        ));

        assert_eq!(
            Some(InternalValue::from_components(
                b"abc".to_vec(),
                b"abc".to_vec(),
                255,
                ValueType::Value,
            )),
            memtable.get(b"abc", SeqNo::MAX)
        );

        assert_eq!(
            Some(InternalValue::from_components(
                b"abc0".to_vec(),
                b"abc".to_vec(),
                0,
                ValueType::Value,
            )),
            memtable.get(b"abc0", SeqNo::MAX)
        );
    }

    #[test]
    fn memtable_get_old_version() {
        let memtable = Memtable::new(0);

        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            0,
            ValueType::Value,
        ));
        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            99,
            ValueType::Value,
        ));
        memtable.insert(InternalValue::from_components(
            b"abc".to_vec(),
            b"abc".to_vec(),
            255,
            ValueType::Value,
        ));

        assert_eq!(
            Some(InternalValue::from_components(
                b"abc".to_vec(),
                b"abc".to_vec(),
                255,
                ValueType::Value,
            )),
            memtable.get(b"abc", SeqNo::MAX)
        );

        assert_eq!(
            Some(InternalValue::from_components(
                b"abc".to_vec(),
                b"abc".to_vec(),
                99,
                ValueType::Value,
            )),
            memtable.get(b"abc", 100)
        );

        assert_eq!(
            Some(InternalValue::from_components(
                b"abc".to_vec(),
                b"abc".to_vec(),
                0,
                ValueType::Value,
            )),
            memtable.get(b"abc", 50)
        );
    }
}
