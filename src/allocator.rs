//! The node's global allocator: mimalloc for small blocks, glibc's allocator, each block in a
//! mapping of its own, for large ones.
//!
//! A node allocates and frees small objects at every request. Under glibc's allocator that took
//! about a tenth of a cluster node's CPU (`perf`: `_int_malloc`, `unlink_chunk`,
//! `malloc_consolidate`, `cfree`); mimalloc's per-thread free lists make them cheap.
//!
//! Large blocks are receive buffers (64 KiB at first, up to a frame's size) and WAL group
//! buffers. A node must give their memory back once the connections that grew them go (a burst
//! of hostile clients each sending most of a 1 MiB frame must not leave a gigabyte resident).
//! glibc, told to map every block from [`LARGE_BYTES`] up on its own, unmaps each one when it is
//! freed; mimalloc keeps freed large blocks in its heaps for reuse, which left tens of MiB
//! resident past the request-memory budget in the hostile-clients test. So each size goes to the
//! allocator that serves it best. The owner of a block follows from its size alone, which
//! `dealloc` and `realloc` are given, so a block always returns to the allocator it came from.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of this size and up come from glibc, each in a mapping of its own.
pub const LARGE_BYTES: usize = 64 << 10;

/// mimalloc below [`LARGE_BYTES`], glibc's allocator from it up.
pub struct NodeAllocator;

static SMALL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn is_large(size: usize) -> bool {
    size >= LARGE_BYTES
}

// SAFETY: every method forwards to the allocator that owns the block, chosen by the block's
// size; both allocators uphold GlobalAlloc's contract, and a block moving between them on
// realloc is copied into a new block and freed by its old owner.
unsafe impl GlobalAlloc for NodeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe {
            if is_large(layout.size()) {
                System.alloc(layout)
            } else {
                SMALL.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe {
            if is_large(layout.size()) {
                System.alloc_zeroed(layout)
            } else {
                SMALL.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout, so from the allocator its size picks.
        unsafe {
            if is_large(layout.size()) {
                System.dealloc(ptr, layout)
            } else {
                SMALL.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was_large, becomes_large) = (is_large(layout.size()), is_large(new_size));
        // SAFETY: within one allocator the call is forwarded as made; across them, a new block
        // is allocated by the new owner, the smaller of the two sizes copied, and the old block
        // freed by its owner.
        unsafe {
            match (was_large, becomes_large) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) => SMALL.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let new_ptr = self.alloc(new_layout);
                    if !new_ptr.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new_ptr
                }
            }
        }
    }
}

/// Makes glibc map every block from [`LARGE_BYTES`] up on its own and unmap it when freed. By
/// default glibc raises that threshold to the largest block freed so far, after which large
/// blocks come from heaps that never shrink. Call before any other thread starts.
pub fn map_large_blocks_alone() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BYTES as i32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_move_between_the_allocators_with_their_bytes() {
        let allocator = NodeAllocator;
        let small = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: every block is used within its size and freed with its own layout.
        unsafe {
            let ptr = allocator.alloc(small);
            assert!(!ptr.is_null());
            for i in 0..1000 {
                *ptr.add(i) = (i % 251) as u8;
            }
            // Small to large, large to large, large back to small: the bytes follow.
            let ptr = allocator.realloc(ptr, small, LARGE_BYTES + 10);
            let large = Layout::from_size_align(LARGE_BYTES + 10, 8).unwrap();
            let ptr = allocator.realloc(ptr, large, 4 * LARGE_BYTES);
            let larger = Layout::from_size_align(4 * LARGE_BYTES, 8).unwrap();
            let ptr = allocator.realloc(ptr, larger, 500);
            assert!((0..500).all(|i| *ptr.add(i) == (i % 251) as u8));
            allocator.dealloc(ptr, Layout::from_size_align(500, 8).unwrap());
            let zeroed = allocator.alloc_zeroed(larger);
            assert!((0..4 * LARGE_BYTES).all(|i| *zeroed.add(i) == 0));
            allocator.dealloc(zeroed, larger);
        }
    }
}
