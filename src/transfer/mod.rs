//! The data path: reading, hashing and sending blocks on the sending side
//! ([`retrieve`], the RetrieveRunner), checking and writing them on the
//! receiving side ([`receive`]). Both run on blocking threads owned by the
//! request's runner, never through actor mailboxes (inline on the runner's
//! runtime under a simulation: see [`crate::determinism`]).

pub mod receive;
pub mod retrieve;
pub mod room;
pub mod send_pool;

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::protocol::block_hash::FileHasher;

/// The hash state of the first `len` bytes of `path` (blocking), in blocks
/// of `block_size` of a file of `size` bytes (`None`: not known yet, and
/// longer than the prefix).
///
/// Used on both sides of a resume: the receiver hashes its partial file to
/// offer a restart point, the sender hashes its source to check the offer.
/// The returned state continues into the whole-file hash, so the prefix is
/// read once. `Ok(None)`: the prefix does not end on a block boundary (nor
/// at the end of the file), so no transfer can resume from it.
pub fn hash_prefix(path: &Path, len: u64, block_size: u32, size: Option<u64>) -> std::io::Result<Option<FileHasher>> {
    if len == 0 {
        return Ok(Some(FileHasher::new(block_size)));
    }
    hash_prefix_of(&std::fs::File::open(path)?, len, block_size, size)
}

/// [`hash_prefix`] of a file already open (positioned reads: the file's
/// own offset is left alone, so the handle can be shared).
pub fn hash_prefix_of(
    file: &std::fs::File,
    len: u64,
    block_size: u32,
    size: Option<u64>,
) -> std::io::Result<Option<FileHasher>> {
    let size = size.unwrap_or(u64::MAX).max(len);
    let mut hasher = FileHasher::new(block_size);
    let block = u64::from(block_size.max(1));
    let mut buf = vec![0u8; usize::try_from(block.min(len)).unwrap_or(usize::MAX)];
    while hasher.len() < len {
        let at = hasher.len();
        let n = usize::try_from(block.min(len - at)).unwrap_or(usize::MAX);
        file.read_exact_at(&mut buf[..n], at)?;
        if hasher.add(size, &buf[..n]).is_none() {
            return Ok(None);
        }
    }
    Ok(Some(hasher))
}

/// A local file's prefix, hashed: where a resume would start.
#[derive(Clone, Debug)]
pub struct Prefix {
    pub offset: u64,
    pub hasher: FileHasher,
}

impl Prefix {
    /// The BLAKE3 of the prefix.
    pub fn digest(&self) -> crate::protocol::Digest {
        self.hasher.digest()
    }
}

#[cfg(test)]
mod tests {
    //! The data path's digests end to end: the sender's pump and the
    //! receiver's writer, each hashing every byte once, agree with `b3sum`
    //! on whole transfers and on transfers resumed at every block boundary.

    use super::*;
    use crate::protocol::{codec, Compression, Digest, Message, Plan};
    use crate::store::RestartPoint;

    /// `b3sum`'s digest of `path`, or `None` when the tool is not installed
    /// (CI installs it and sets `FERRY_REQUIRE_B3SUM`, so there it must be).
    fn b3sum(path: &Path) -> Option<Digest> {
        match std::process::Command::new("b3sum").arg("--no-names").arg(path).output() {
            Ok(out) if out.status.success() => {
                let hex = String::from_utf8(out.stdout).expect("b3sum prints hex");
                let bytes: Vec<u8> = (0..32)
                    .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).expect("hex digit"))
                    .collect();
                Some(Digest(bytes.try_into().expect("32 bytes")))
            }
            Ok(out) => panic!("b3sum failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => {
                assert!(std::env::var_os("FERRY_REQUIRE_B3SUM").is_none(), "b3sum is required here: {e}");
                None
            }
        }
    }

    /// Sends `name` from `dir` into `work` from `restart` (both sides'
    /// prefixes read from disk, as a resume does); the receiver's digest.
    async fn transfer(dir: &Path, name: &str, work: &Path, block_size: u32, restart: u64) -> Digest {
        let source = retrieve::open_source(dir, name, "r", "a").expect("opens");
        let size = source.snapshot.size;
        let plan = Plan { size, block_size, restart_offset: restart, compression: Compression::None };
        let point = Some(RestartPoint { offset: restart, prefix_hash: Digest([0; 32]) });
        let offer = receive::resume_offer(work, point, block_size, Some(size)).expect("reads the work file");
        let theirs = match restart {
            0 => None,
            _ => hash_prefix_of(&source.file, restart, block_size, Some(size)).expect("reads"),
        };
        let (mine, theirs) = match (offer.prefix, theirs) {
            (Some(m), Some(t)) => {
                assert_eq!(m.digest(), t.digest(), "both sides agree on the prefix");
                (Some(m), Some(Prefix { offset: restart, hasher: t }))
            }
            (None, None) => (None, None),
            (m, t) => panic!("one side offers a prefix at {restart}, the other not: {m:?} {t:?}"),
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A pool of one frame: every other frame waits for the one before.
        let pool = send_pool::SendPool::new(block_size as usize + crate::protocol::codec::DATA_FRAME_ROOM);
        let mut pump = retrieve::start(source, plan.clone(), theirs, stop, Some(pool.slots("b")));
        let mut writer = receive::BlockWriter::start(work.to_path_buf(), plan, mine, None);
        let sent = loop {
            match pump.recv().await.expect("the pump ends with an event") {
                retrieve::PumpEvent::Frame { frame, .. } => {
                    let (msg, _) = codec::decode_frame(&frame).expect("decodes").expect("whole frame");
                    let Message::Data(d) = msg else { panic!("a data frame") };
                    assert!(writer.write(d).await, "the writer takes the block");
                }
                retrieve::PumpEvent::Finished(end) => break end,
                retrieve::PumpEvent::Failed { message, .. } => panic!("{message}"),
            }
        };
        let got = writer.finish().await.expect("every block checks");
        assert_eq!(got, sent, "receiver and sender agree");
        got.hash
    }

    #[tokio::test]
    async fn single_pass_digests_equal_b3sum_around_block_boundaries_and_across_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut checked_with_b3sum = 0;
        for block in [4096u32, 65_536] {
            let b = u64::from(block);
            for size in [0, 1, b - 1, b, b + 1, 2 * b - 1, 2 * b, 2 * b + 1, 7 * b + 5, 8 * b, 17 * b - 3] {
                let name = format!("f{block}-{size}");
                let path = dir.path().join(&name);
                let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
                std::fs::write(&path, &data).expect("write");
                let expected = Digest::of(&data);
                if let Some(tool) = b3sum(&path) {
                    assert_eq!(tool, expected, "b3sum and the blake3 crate agree on {name}");
                    checked_with_b3sum += 1;
                }
                let work = dir.path().join(format!("{name}.part"));
                assert_eq!(transfer(dir.path(), &name, &work, block, 0).await, expected, "{name} whole");
                // A resume at every block boundary, the work file holding the prefix.
                for k in 1..=size / b {
                    let at = k * b;
                    std::fs::write(&work, &data[..at as usize]).expect("write the partial file");
                    let got = transfer(dir.path(), &name, &work, block, at).await;
                    assert_eq!(got, expected, "{name} resumed at {at}");
                    assert_eq!(std::fs::read(&work).expect("read"), data, "{name} resumed at {at}: the bytes");
                }
            }
        }
        eprintln!("checked against b3sum: {checked_with_b3sum} files");
    }

    #[test]
    fn a_prefix_off_a_block_boundary_offers_no_resume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * 4096]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        assert!(hash_prefix_of(&file, 5000, 4096, Some(3 * 4096)).expect("reads").is_none());
        assert!(hash_prefix_of(&file, 5000, 4096, None).expect("reads").is_none());
        let whole = hash_prefix_of(&file, 3 * 4096, 4096, None).expect("reads").expect("on a boundary");
        assert_eq!(whole.digest(), Digest::of(&[7u8; 3 * 4096]));
        let offer =
            receive::resume_offer(&path, Some(RestartPoint { offset: 5000, prefix_hash: Digest([0; 32]) }), 4096, None)
                .expect("reads");
        assert!(offer.prefix.is_none(), "nothing to offer off a boundary");
        // Unless the point is the file's end: a pull's receiver, which does
        // not know the size, hashes an unaligned point as the whole file.
        std::fs::write(&path, vec![7u8; 5000]).expect("write");
        let point = Some(RestartPoint { offset: 5000, prefix_hash: Digest([0; 32]) });
        let offer = receive::resume_offer(&path, point, 4096, Some(5000)).expect("reads");
        let prefix = offer.prefix.expect("the whole file is a prefix");
        assert_eq!(prefix.digest(), Digest::of(&[7u8; 5000]));
    }
}
