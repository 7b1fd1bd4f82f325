//! quinn over turmoil's simulated UDP, with packet loss and a stateful
//! firewall.
//!
//! [`SimSocket`] is quinn's `AsyncUdpSocket` on a `turmoil::net::UdpSocket`:
//! one datagram per send (no GSO, `max_transmit_segments` stays 1) and one
//! per receive. Latency, partitions and crashes are turmoil's; [`Faults`]
//! adds what turmoil does not model the way a real network behaves, both
//! decided by the run's seed:
//!
//! **Loss.** turmoil's `fail_rate` is not packet loss: each send fails the
//! whole link with that probability, dropping every datagram in flight on
//! it. At 10% and 200 ms of latency that wipes out nearly all traffic (a
//! `lossy_links` run, seed 446, crawled past its 300 s limit that way). So
//! the sockets drop each datagram independently with the link's loss rate,
//! drawn from a generator seeded by the run.
//!
//! **Firewall.** It models what a one-way partition means for QUIC in practice.
//! A plain one-way partition (turmoil's `partition_oneway`) drops every
//! datagram from A to B, so no QUIC connection works in either direction —
//! the replies to B's own dial are dropped too. A firewall in front of B is
//! stateful: it drops *new* traffic from A but lets through A's answers to
//! traffic B sent first (conntrack). The sockets apply it on receipt: B's
//! socket drops a datagram from A unless B has sent to that address before.
//! That is exactly the case reverse connect exists for. Conntrack entries
//! do not expire: Linux keeps an answered UDP flow for 120 s after its last
//! packet, and the nodes' heartbeats keep theirs busy.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Loss rates, blocked (host, from) pairs and the conntrack entries that
/// open them.
#[derive(Debug)]
struct FaultState {
    /// Per link (the smaller address first): the chance each datagram is lost.
    loss: std::collections::BTreeMap<(IpAddr, IpAddr), f64>,
    rng: StdRng,
    /// `host` drops new traffic from `from`.
    blocked: BTreeSet<(IpAddr, IpAddr)>,
    /// `host` has sent to `peer`: answers from `peer` pass.
    tracked: BTreeSet<(IpAddr, SocketAddr)>,
    /// Datagrams the firewalls dropped so far (the scenario checks the
    /// firewall worked).
    dropped: u64,
    /// Datagrams lost so far (likewise for loss).
    lost: u64,
}

/// The cluster's packet loss and firewalls, shared by every host's socket.
#[derive(Clone, Debug)]
pub struct Faults(Arc<Mutex<FaultState>>);

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults(Arc::new(Mutex::new(FaultState {
            loss: Default::default(),
            rng: StdRng::seed_from_u64(seed ^ 0x10_55),
            blocked: BTreeSet::new(),
            tracked: BTreeSet::new(),
            dropped: 0,
            lost: 0,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        // A panic while holding this lock already fails the run.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each datagram between `a` and `b` is lost with probability `rate`.
    pub fn set_loss(&self, a: IpAddr, b: IpAddr, rate: f64) {
        self.state().loss.insert((a.min(b), a.max(b)), rate);
    }

    /// `host` drops new traffic from `from` from now on.
    pub fn block(&self, host: IpAddr, from: IpAddr) {
        self.state().blocked.insert((host, from));
    }

    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }

    pub fn lost(&self) -> u64 {
        self.state().lost
    }

    /// Whether a datagram from `host` to `to` goes out (not lost); notes
    /// the conntrack entry a firewall in front of `host` would make.
    fn sent(&self, host: IpAddr, to: SocketAddr) -> bool {
        let mut s = self.state();
        if s.blocked.contains(&(host, to.ip())) {
            s.tracked.insert((host, to));
        }
        let rate = s.loss.get(&(host.min(to.ip()), host.max(to.ip()))).copied().unwrap_or(0.0);
        let lost = rate > 0.0 && s.rng.random_bool(rate);
        s.lost += u64::from(lost);
        !lost
    }

    fn admits(&self, host: IpAddr, from: SocketAddr) -> bool {
        let mut s = self.state();
        let pass = !s.blocked.contains(&(host, from.ip())) || s.tracked.contains(&(host, from));
        if !pass {
            s.dropped += 1;
        }
        pass
    }
}

/// A node's QUIC socket on the simulated network.
pub struct SimSocket {
    inner: Arc<turmoil::net::UdpSocket>,
    local: SocketAddr,
    /// The pending wait for a datagram, kept across polls.
    readable: Mutex<Option<Readable>>,
    faults: Faults,
}

impl std::fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSocket").field("local", &self.local).finish()
    }
}

impl SimSocket {
    /// Binds `addr`'s port on the current simulated host, whose address
    /// `addr` is (turmoil binds only unspecified addresses).
    pub async fn bind(addr: SocketAddr, faults: Faults) -> io::Result<SimSocket> {
        let unspecified = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
        let inner = turmoil::net::UdpSocket::bind(unspecified).await?;
        Ok(SimSocket { inner: Arc::new(inner), local: addr, readable: Mutex::new(None), faults })
    }
}

/// turmoil's UDP has no back-pressure: a socket is always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !self.faults.sent(self.local.ip(), transmit.destination) {
            return Ok(()); // lost on the way, silently, as UDP is
        }
        self.inner.try_send_to(transmit.contents, transmit.destination).map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.try_recv_from(&mut bufs[0]) {
                Ok((len, from)) => {
                    if !self.faults.admits(self.local.ip(), from) {
                        continue;
                    }
                    meta[0] = RecvMeta { addr: from, len, stride: len, ecn: None, dst_ip: Some(self.local.ip()) };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut slot = self.readable.lock().unwrap_or_else(|e| e.into_inner());
            let wait = slot.get_or_insert_with(|| {
                let socket = self.inner.clone();
                Box::pin(async move { socket.readable().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    *slot = None;
                    r?;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
