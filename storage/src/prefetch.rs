//! Cache-line prefetch hints: what a batch of reads asks for ahead, so that the misses of its
//! reads overlap instead of each read stalling on its own in turn.

/// Bytes in a cache line.
pub(crate) const LINE_BYTES: usize = 64;

/// Prefetches the cache line at `address` into every level.
#[inline(always)]
pub(crate) fn prefetch_line<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint to the processor: it reads nothing the program sees and
    // does not fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
