//! Giving memory the node freed back to the system.
//!
//! glibc's allocator keeps what a program frees in its arenas for reuse,
//! and gives it back only from the top of each heap. After a burst of
//! transfers (each holding blocks of a MiB) most of it sits in the middle:
//! a sender idle after 64 concurrent pushes of 64 MiB still held 352 MiB
//! (docs/BENCHMARKS.md "Memory"). Once no request channel has been open
//! for a second, the node asks the allocator to return its free pages
//! (`malloc_trim`), off the async threads. While transfers run it does not:
//! they would take the memory again at once.

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

/// Until shutdown: each time `open_channels` falls to zero after it was
/// above, [`release_freed`].
pub async fn trim_when_idle(open_channels: Arc<AtomicUsize>, mut shutdown: watch::Receiver<bool>) {
    let mut busy = false;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
        if open_channels.load(Ordering::Relaxed) > 0 {
            busy = true;
        } else if std::mem::take(&mut busy) {
            let _ = tokio::task::spawn_blocking(release_freed).await;
        }
    }
}
