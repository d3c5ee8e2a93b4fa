//! The binary's global allocator (a module of the binary: the library forbids `unsafe`): mimalloc,
//! asked the way its fast paths want.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, whose fast path covers blocks of
//! up to 1 KiB only: a request's boxed handler future and hyper's buffers took mimalloc's generic aligned
//! path, about 1.5 k instructions a request in all. A layout whose alignment is at most 16 bytes and at
//! most its size needs no aligned allocation: every mimalloc block is aligned to 16 bytes, or to its size
//! for smaller blocks (the rule the `mimalloc` crate itself followed up to 0.1.3x). Anything else still
//! goes through the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this many bytes has.
const MIN_ALIGN: usize = 16;

/// mimalloc as a Rust global allocator.
pub struct MiMalloc;

fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

/// `plain_call(size)` when mimalloc's plain call already gives the layout's alignment, else
/// `aligned_call(size, align)`.
///
/// # Safety
/// Plain FFI calls into mimalloc; a null return is the allocation failure `GlobalAlloc` expects.
#[inline]
unsafe fn allocate(
    layout: Layout,
    plain_call: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_call: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: as the function's contract.
    unsafe {
        if plain(layout.align(), layout.size()) {
            plain_call(layout.size()) as *mut u8
        } else {
            aligned_call(layout.size(), layout.align()) as *mut u8
        }
    }
}

// SAFETY: every pointer returned comes from mimalloc and is freed by `mi_free`, which takes pointers from
// both the plain and the aligned calls; `plain` only admits layouts mimalloc's plain calls already align.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see `allocate`.
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see `allocate`.
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract); the new block keeps
        // the alignment, by the same rule as `alloc`.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout comes back aligned as asked, across the plain and the aligned calls and through
    /// growth and shrinking.
    #[test]
    fn blocks_are_aligned_as_asked() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 15, 16, 24, 100, 1024, 1500, 70_000] {
                let Ok(layout) = Layout::from_size_align(size.max(align), align) else { continue };
                // SAFETY: a non-zero layout; freed with the same allocator.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xAB, layout.size());
                    let q = a.realloc(p, layout, layout.size() * 3);
                    assert_eq!(q as usize % align, 0, "grown: size {size} align {align}");
                    assert_eq!(*q, 0xAB);
                    let r = a.realloc(q, Layout::from_size_align(layout.size() * 3, align).unwrap(), align);
                    assert_eq!(r as usize % align, 0, "shrunk: size {size} align {align}");
                    a.dealloc(r, Layout::from_size_align(align, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, layout.size()).iter().all(|b| *b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
