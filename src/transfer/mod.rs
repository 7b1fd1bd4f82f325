//! The data path: reading, hashing and sending blocks on the sending side
//! ([`retrieve`], the RetrieveRunner), checking and writing them on the
//! receiving side ([`receive`]). Both run on blocking threads owned by the
//! request's runner, never through actor mailboxes (inline on the runner's
//! runtime under a simulation: see [`crate::determinism`]).

pub mod receive;
pub mod retrieve;

use std::io::Read;
use std::path::Path;

/// BLAKE3 state after hashing the first `len` bytes of `path` (blocking).
///
/// Used on both sides of a resume: the receiver hashes its partial file to
/// offer a restart point, the sender hashes its source to check the offer.
/// The returned state continues into the whole-file hash, so the prefix is
/// read once.
pub fn hash_prefix(path: &Path, len: u64) -> std::io::Result<blake3::Hasher> {
    let mut hasher = blake3::Hasher::new();
    if len == 0 {
        return Ok(hasher);
    }
    let mut file = std::fs::File::open(path)?;
    let mut left = len;
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
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
