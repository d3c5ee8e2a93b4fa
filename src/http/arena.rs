//! Small bytes that live about as long as one request (generated request ids, JSON answers), carved
//! from a per-thread buffer: one allocation for a few kilobytes of them instead of one or two each.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// The size of each thread's buffer; a new one is started when the next piece does not fit.
const ARENA_BYTES: usize = 4096;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The bytes `write` puts down, which should take at most `len` of them (more is still correct, at the
/// cost of an allocation). They share the buffer's allocation, freed once its last piece is dropped.
pub fn carve(len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    ARENA.with_borrow_mut(|arena| {
        if arena.capacity() < len {
            *arena = BytesMut::with_capacity(len.max(ARENA_BYTES));
        }
        write(arena);
        arena.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_carved_from_one_buffer_after_another_keep_their_bytes() {
        // Several buffers' worth, all held at once, one piece larger than a buffer among them.
        let pieces: Vec<(usize, Bytes)> = (0..2_000)
            .map(|i| {
                let len = if i == 700 { 3 * ARENA_BYTES } else { 1 + i % 40 };
                (i, carve(len, |b| b.extend(std::iter::repeat_n(i as u8, len))))
            })
            .collect();
        for (i, piece) in &pieces {
            let len = if *i == 700 { 3 * ARENA_BYTES } else { 1 + i % 40 };
            assert_eq!(piece.len(), len);
            assert!(piece.iter().all(|&b| b == *i as u8), "piece {i} was overwritten");
        }
        // A piece that writes more than it announced is whole too.
        let long = carve(1, |b| b.extend_from_slice(&[7; 100]));
        assert_eq!(&long[..], &[7; 100][..]);
    }
}
