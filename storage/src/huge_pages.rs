//! No transparent huge pages for a process that hosts the engine.
//!
//! mimalloc asks for huge pages on its arenas where the kernel allows it
//! (`madvise` mode, the usual default). A 2 MiB page counts whole in the
//! resident set as soon as one byte of it is touched, and it is returned
//! only whole, so the engine's churn of blocks, memtables and cell maps
//! left most huge pages part-used: 1,500,000 replay tags into the
//! all-in-one peaked at 935 MiB resident with huge pages and 511 MiB
//! without (`MIMALLOC_ALLOW_THP=0`), at the same rate; a 10-million-tag run
//! passed 2.3 GB by 3.7 million tags. Turning them off for the process
//! (a flag on its address space, not a setting of the allocator) keeps
//! resident memory near what is actually used.

use std::sync::Once;

/// Turns transparent huge pages off for the whole process, once. Pages
/// already huge stay so; everything allocated after the call is in 4 KiB
/// pages.
pub fn disable() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
            // A sandbox that forbids prctl: memory is only larger.
            tracing::debug!(%err, "cannot turn transparent huge pages off");
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_flag_is_set() {
        super::disable();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
