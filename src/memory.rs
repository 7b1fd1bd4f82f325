//! Giving memory the node freed back to the system.
//!
//! glibc's allocator keeps what a program frees in its arenas for reuse,
//! and gives it back only from the top of each heap. After a burst of
//! transfers (each holding blocks of a MiB) most of it sits in the middle:
//! a sender idle after 64 concurrent pushes of 64 MiB still held 352 MiB
//! (docs/BENCHMARKS.md "Memory"). Once no request channel has been open
//! for a second after some were (or the allocator keeps more than 16 MiB
//! freed: a burst shorter than a second), the node asks the allocator to
//! return its free pages (`malloc_trim`), off the async threads. While
//! transfers run it does not: they would take the memory again at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How often the node looks whether it went idle.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Returns the allocator's free pages to the system (glibc only; elsewhere
/// nothing to do).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Freed memory the allocator keeps above which an idle node gives it
/// back even if it saw no channel open (a burst shorter than a look).
const KEPT_AT_MOST: usize = 16 << 20;

/// Bytes the allocator holds free in its arenas (glibc only; 0 elsewhere).
pub fn freed_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let info = unsafe { libc::mallinfo2() };
        info.fordblks
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

/// Until shutdown: once a second, when no request channel is open and
/// some were since the last look, or the allocator keeps more than 16 MiB
/// freed, [`release_freed`].
pub async fn trim_when_idle(open_channels: Arc<AtomicUsize>, mut shutdown: watch::Receiver<bool>) {
    let mut busy = false;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
        if open_channels.load(Ordering::Relaxed) > 0 {
            busy = true;
        } else if std::mem::take(&mut busy) || freed_bytes() > KEPT_AT_MOST {
            let _ = tokio::task::spawn_blocking(release_freed).await;
        }
    }
}
