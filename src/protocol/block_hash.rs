//! How a transfer hashes its blocks and its whole file, each byte once per
//! side (protocol version 6).
//!
//! BLAKE3 is a tree: the file is cut into 1 KiB chunks, and each parent node
//! joins the chaining values (non-root hashes) of its two subtrees, the left
//! one always the largest power of two chunks smaller than the whole. So when
//! the block size is a power of two (every block size a node proposes by
//! default is) and the file is longer than one block, the block at offset
//! `i * block_size` is a whole subtree of the file's tree:
//!
//! - a **block's digest** on the wire is that subtree's chaining value
//!   (BLAKE3's non-root hash of the block at its offset);
//! - the **file's digest** is merged from the blocks' chaining values in the
//!   order BLAKE3's own hasher merges chunks, so it is exactly
//!   `blake3::hash` of the file, what `b3sum` prints;
//! - so a side hashes each byte once: the receiver's per-block check and its
//!   whole-file digest are the same pass, as are the sender's.
//!
//! A file of one block (or none) is the tree's root: its block's digest is the
//! block's BLAKE3, which is the file's. A block size that is not a power of
//! two (a config or a request may set any size in range) keeps version 5's
//! way: each block's own BLAKE3, and the file hashed in a second pass.
//!
//! The first block of a longer file is also hashed as a root, once, so that
//! the digest of a prefix of exactly one block (a restart point after the
//! first block) is its BLAKE3 too: a prefix's digest is always the BLAKE3 of
//! its bytes.
//!
//! Blocks come in order, contiguous from offset 0, all full but the last.
//! A block that breaks this (a partner's short block in the middle, an
//! empty one) does not match any digest: [`FileHasher::check`] says `false`
//! and absorbs nothing; nothing here panics on a partner's input.

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};

use super::Digest;

/// The hash state of a file's first blocks: what the blocks so far
/// contribute to the whole-file digest.
#[derive(Clone, Debug)]
pub struct FileHasher {
    block_size: u64,
    /// Bytes absorbed: the offset of the next block.
    len: u64,
    shape: Shape,
}

#[derive(Clone, Debug)]
enum Shape {
    /// Power-of-two blocks: their chaining values, merged lazily as
    /// BLAKE3's hasher merges chunks (a pair is joined only once a later
    /// block shows that the pair is not the root's children), and the
    /// first block's root hash (the digest of a one-block prefix, or of a
    /// one-block file).
    Tree { stack: Vec<ChainingValue>, blocks: u64, first_root: Option<Digest>, ended: bool },
    /// Any other block size: the whole file hashed again, as in version 5.
    Flat(Box<blake3::Hasher>),
}

/// One block, hashed: its digest on the wire, and what it adds to the file.
struct Hashed {
    wire: Digest,
    cv: Option<ChainingValue>,
    root: Option<Digest>,
}

impl FileHasher {
    /// The state of an empty prefix, for blocks of `block_size` bytes.
    pub fn new(block_size: u32) -> FileHasher {
        let block_size = u64::from(block_size.max(1));
        let shape = if is_tree_block_size(block_size) {
            Shape::Tree { stack: Vec::new(), blocks: 0, first_root: None, ended: false }
        } else {
            Shape::Flat(Box::new(blake3::Hasher::new()))
        };
        FileHasher { block_size, len: 0, shape }
    }

    /// How many bytes it covers: the offset of the next block.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The block size it hashes for.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes the next block of a file of `file_size` bytes (the sender's own
    /// blocks, in order), adds it, and returns its digest for the wire;
    /// `None` (and nothing added) when it cannot be the next block (see the
    /// module doc).
    pub fn add(&mut self, file_size: u64, block: &[u8]) -> Option<Digest> {
        let h = self.hash_block(file_size, block)?;
        let wire = h.wire;
        self.absorb(h, block);
        Some(wire)
    }

    /// Checks a partner's block against its digest, and adds it only if it
    /// matches (and fits: the next offset, not empty, full unless last).
    pub fn check(&mut self, file_size: u64, offset: u64, block: &[u8], expected: &Digest) -> bool {
        if offset != self.len {
            return false;
        }
        match self.hash_block(file_size, block) {
            Some(h) if h.wire == *expected => {
                self.absorb(h, block);
                true
            }
            _ => false,
        }
    }

    /// The digest of the bytes absorbed so far: the BLAKE3 of the prefix, and
    /// once every block is in, of the whole file.
    pub fn digest(&self) -> Digest {
        match &self.shape {
            Shape::Flat(h) => h.finalize().into(),
            Shape::Tree { stack, first_root, .. } => match stack.as_slice() {
                [] => first_root.unwrap_or_else(|| Digest::of(&[])),
                [_] => first_root.expect("the first block's root hash is kept with its chaining value"),
                [.., left, right] => {
                    let mut right_cv = *right;
                    let mut rest = stack.len() - 2;
                    let mut left = *left;
                    // Joined from the right: every join is a parent inside the
                    // tree except the last, which is the root.
                    while rest > 0 {
                        right_cv = merge_subtrees_non_root(&left, &right_cv, Mode::Hash);
                        rest -= 1;
                        left = stack[rest];
                    }
                    Digest(*merge_subtrees_root(&left, &right_cv, Mode::Hash).as_bytes())
                }
            },
        }
    }

    /// Hashes a block at `self.len`, or `None` when it cannot be the next
    /// block of a file of `file_size` bytes.
    fn hash_block(&self, file_size: u64, block: &[u8]) -> Option<Hashed> {
        let (offset, len) = (self.len, block.len() as u64);
        let end = offset.checked_add(len)?;
        if len == 0 || end > file_size || len > self.block_size {
            return None;
        }
        match &self.shape {
            Shape::Flat(_) => Some(Hashed { wire: Digest::of(block), cv: None, root: None }),
            Shape::Tree { ended, .. } => {
                if *ended || !offset.is_multiple_of(self.block_size) || (len < self.block_size && end != file_size) {
                    return None;
                }
                if file_size <= self.block_size {
                    // The file is this one block: the tree's root.
                    let root = Digest::of(block);
                    return Some(Hashed { wire: root, cv: None, root: Some(root) });
                }
                let mut h = blake3::Hasher::new();
                h.set_input_offset(offset);
                h.update(block);
                let cv = h.finalize_non_root();
                let root = (offset == 0).then(|| Digest::of(block));
                Some(Hashed { wire: Digest(cv), cv: Some(cv), root })
            }
        }
    }

    fn absorb(&mut self, hashed: Hashed, block: &[u8]) {
        self.len += block.len() as u64;
        match &mut self.shape {
            Shape::Flat(h) => {
                h.update(block);
            }
            Shape::Tree { stack, blocks, first_root, ended } => {
                if let Some(root) = hashed.root {
                    *first_root = Some(root);
                }
                match hashed.cv {
                    Some(cv) => {
                        // Joins the pairs that the count of blocks so far
                        // shows to be complete subtrees, then adds this one.
                        let keep = blocks.count_ones() as usize;
                        while stack.len() > keep {
                            let right = stack.pop().expect("more entries than kept");
                            let left = stack.pop().expect("a pair is complete");
                            stack.push(merge_subtrees_non_root(&left, &right, Mode::Hash));
                        }
                        stack.push(cv);
                        *blocks += 1;
                    }
                    // A one-block file: its root is its digest, and nothing follows.
                    None => *ended = true,
                }
                if (block.len() as u64) < self.block_size {
                    *ended = true;
                }
            }
        }
    }
}

/// Whether blocks of `block_size` bytes are subtrees of BLAKE3's tree: a
/// power of two of at least one chunk (1 KiB).
pub fn is_tree_block_size(block_size: u64) -> bool {
    block_size.is_power_of_two() && block_size >= blake3::CHUNK_LEN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        // Not all zeros, not periodic in a block: a wrong merge shows.
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    /// Every block added as a sender does; returns the file's digest and
    /// the block digests.
    fn send(bytes: &[u8], block_size: u32) -> (Digest, Vec<Digest>) {
        let mut h = FileHasher::new(block_size);
        let wire = bytes.chunks(block_size as usize).map(|b| h.add(bytes.len() as u64, b).expect("fits")).collect();
        (h.digest(), wire)
    }

    #[test]
    fn the_file_digest_is_blake3_of_the_file_for_sizes_around_block_boundaries() {
        for block in [4096u32, 8192, 65_536, 1 << 20] {
            let b = block as usize;
            for blocks in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17] {
                for delta in [-1i64, 0, 1, 1024, -1024, 1025] {
                    let Ok(len) = usize::try_from(blocks as i64 * b as i64 + delta) else { continue };
                    if len > 20 * (1 << 20) {
                        continue;
                    }
                    let bytes = data(len);
                    let (digest, _) = send(&bytes, block);
                    assert_eq!(digest, Digest::of(&bytes), "{len} bytes in blocks of {block}");
                }
            }
        }
    }

    #[test]
    fn a_receiver_checks_each_block_and_gets_the_same_digest_in_the_same_pass() {
        let block = 8192u32;
        for len in [1usize, 8191, 8192, 8193, 5 * 8192 + 7, 32 * 8192] {
            let bytes = data(len);
            let (sent, wire) = send(&bytes, block);
            let mut r = FileHasher::new(block);
            for (i, (b, d)) in bytes.chunks(block as usize).zip(&wire).enumerate() {
                assert!(r.check(len as u64, (i * block as usize) as u64, b, d), "block {i} of {len}");
            }
            assert_eq!(r.digest(), sent);
            assert_eq!(r.digest(), Digest::of(&bytes));
        }
    }

    #[test]
    fn a_prefix_digest_is_blake3_of_the_prefix_and_continues_into_the_file() {
        let block = 4096u32;
        let bytes = data(13 * 4096 + 100);
        let mut h = FileHasher::new(block);
        for (i, b) in bytes.chunks(block as usize).enumerate() {
            h.add(bytes.len() as u64, b).expect("fits");
            let end = ((i + 1) * block as usize).min(bytes.len());
            assert_eq!(h.digest(), Digest::of(&bytes[..end]), "prefix of {end} bytes");
            // A resume from here: a copy continues to the same file digest.
            let mut resumed = h.clone();
            for b in bytes[end..].chunks(block as usize) {
                resumed.add(bytes.len() as u64, b).expect("fits");
            }
            assert_eq!(resumed.digest(), Digest::of(&bytes), "resumed at {end}");
        }
    }

    #[test]
    fn a_block_that_does_not_fit_is_refused_without_a_panic() {
        let block = 4096u32;
        let bytes = data(3 * 4096);
        let size = bytes.len() as u64;
        let (_, wire) = send(&bytes, block);
        let mut r = FileHasher::new(block);
        assert!(!r.check(size, 0, &bytes[..4096], &wire[1]), "another block's digest");
        assert!(!r.check(size, 4096, &bytes[4096..8192], &wire[1]), "not the next offset");
        assert!(!r.check(size, 0, &[], &Digest::of(&[])), "an empty block");
        assert!(!r.check(size, 0, &bytes[..8192], &wire[0]), "longer than a block");
        assert!(r.check(size, 0, &bytes[..4096], &wire[0]));
        // A short block in the middle, with the digest a liar would compute.
        let mut liar = blake3::Hasher::new();
        liar.set_input_offset(4096);
        liar.update(&bytes[4096..5000]);
        let lie = Digest(liar.finalize_non_root());
        assert!(!r.check(size, 4096, &bytes[4096..5000], &lie), "a short block that is not the last");
        assert!(!r.check(size + 1_000_000, 4096, &bytes[4096..5000], &lie), "a size that grew");
        assert_eq!(r.len(), 4096, "nothing refused was absorbed");
        // A block past the announced size.
        assert!(!r.check(5000, 4096, &bytes[4096..8192], &wire[1]));
        assert!(r.check(size, 4096, &bytes[4096..8192], &wire[1]));
        assert!(r.check(size, 8192, &bytes[8192..], &wire[2]));
        assert_eq!(r.digest(), Digest::of(&bytes));
        assert!(!r.check(size, size, &[1], &Digest::of(&[1])), "nothing after the end");
    }

    #[test]
    fn a_block_size_that_is_not_a_power_of_two_hashes_blocks_and_file_separately() {
        let block = 5000u32;
        let bytes = data(23_456);
        let (digest, wire) = send(&bytes, block);
        assert_eq!(digest, Digest::of(&bytes));
        for (b, d) in bytes.chunks(block as usize).zip(&wire) {
            assert_eq!(*d, Digest::of(b), "each block's own BLAKE3");
        }
        assert!(matches!(FileHasher::new(block).shape, Shape::Flat(_)), "two passes");
        assert!(matches!(FileHasher::new(1 << 20).shape, Shape::Tree { .. }), "one pass");
    }

    #[test]
    fn one_block_files_send_their_own_blake3() {
        for len in [1usize, 100, 4096] {
            let bytes = data(len);
            let (digest, wire) = send(&bytes, 4096);
            assert_eq!(wire, vec![Digest::of(&bytes)]);
            assert_eq!(digest, Digest::of(&bytes));
        }
        assert_eq!(FileHasher::new(4096).digest(), Digest::of(&[]), "an empty file");
    }
}
