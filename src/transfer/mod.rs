//! The data path: reading, hashing and sending blocks on the sending side
//! ([`retrieve`], the RetrieveRunner), checking and writing them on the
//! receiving side ([`receive`]). Both run on blocking threads owned by the
//! request's runner, never through actor mailboxes (inline on the runner's
//! runtime under a simulation: see [`crate::determinism`]).

pub mod receive;
pub mod retrieve;

use std::os::unix::fs::FileExt;
use std::path::Path;

/// BLAKE3 state after hashing the first `len` bytes of `path` (blocking).
///
/// Used on both sides of a resume: the receiver hashes its partial file to
/// offer a restart point, the sender hashes its source to check the offer.
/// The returned state continues into the whole-file hash, so the prefix is
/// read once.
pub fn hash_prefix(path: &Path, len: u64) -> std::io::Result<blake3::Hasher> {
    if len == 0 {
        return Ok(blake3::Hasher::new());
    }
    hash_prefix_of(&std::fs::File::open(path)?, len)
}

/// [`hash_prefix`] of a file already open (positioned reads: the file's
/// own offset is left alone, so the handle can be shared).
pub fn hash_prefix_of(file: &std::fs::File, len: u64) -> std::io::Result<blake3::Hasher> {
    let mut hasher = blake3::Hasher::new();
    let mut at = 0;
    let mut buf = vec![0u8; (1 << 20).min(usize::try_from(len).unwrap_or(usize::MAX))];
    while at < len {
        let n = buf.len().min(usize::try_from(len - at).unwrap_or(usize::MAX));
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher)
}

/// A local file's prefix, hashed: where a resume would start.
#[derive(Clone, Debug)]
pub struct Prefix {
    pub offset: u64,
    pub hasher: blake3::Hasher,
}

impl Prefix {
    pub fn digest(&self) -> crate::protocol::Digest {
        self.hasher.finalize().into()
    }
}
