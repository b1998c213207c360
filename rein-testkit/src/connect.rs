//! New TCP connections inside throwaway namespaces, for the tests and benchmarks of connection
//! limits (`rein conn`): a server that accepts everything, and a client that counts what a
//! limit let through, what it refused (ECONNREFUSED) and how fast it refused.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    error::{Error, Result},
    netns::Netns,
};

/// What a server does with a connection it accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Closes it at once.
    Close,
    /// Answers whatever arrived first (an HTTP request from curl, or nothing) with an empty
    /// HTTP 200, then closes it.
    Http,
}

/// TCP listeners inside a namespace, accepting every connection until dropped.
pub struct Server {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on each of `addrs` (port 0: a free one) inside `ns`. Only the binding happens in
    /// there: a socket keeps the namespace it was made in, so the accepting thread need not.
    pub fn start(ns: &Netns, addrs: &[SocketAddr], reply: Reply) -> Result<Self> {
        let listeners = ns.run(|| {
            addrs
                .iter()
                .map(|addr| {
                    let listener = TcpListener::bind(addr)?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                })
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let listeners =
            listeners.map_err(|e| Error::failed(format!("listening on {addrs:?}: {e}")))?;
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::failed(format!("the listeners' addresses: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for listener in &listeners {
                    while let Ok((stream, _)) = listener.accept() {
                        if reply == Reply::Http {
                            answer(stream);
                        }
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        Ok(Self {
            addrs,
            stop,
            thread: Some(thread),
        })
    }

    /// The address of the first listener, with the port it got.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }
}

/// An empty 200 for whoever asked; connects that send nothing get it too and close.
fn answer(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut buffer = [0u8; 512];
    let _ = stream.read(&mut buffer);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a client saw.
#[derive(Default)]
pub struct Connects {
    pub allowed: u64,
    pub refused: u64,
    /// The slowest refused connect, less the time the thread waited for a CPU (two cores shared
    /// with other tests preempt it for up to hundreds of ms): a refusal is at once, never a
    /// timeout.
    pub slowest_refusal: Duration,
    /// The slowest refused connect, as the clock on the wall saw it.
    pub slowest_refusal_wall: Duration,
    /// When each connect began, for a model to replay.
    pub attempts: Vec<Instant>,
    /// Failures other than ECONNREFUSED.
    pub other: Vec<String>,
}

impl std::fmt::Debug for Connects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} allowed, {} refused (slowest {:?} less CPU waits, {:?} on the wall), other {:?}",
            self.allowed, self.refused, self.slowest_refusal, self.slowest_refusal_wall, self.other
        )
    }
}

/// How long the calling thread has waited for a CPU, from /proc/thread-self/schedstat (its
/// second field, ns).
fn run_delay() -> Result<Duration> {
    let text = fs::read_to_string("/proc/thread-self/schedstat")
        .map_err(|e| Error::failed(format!("/proc/thread-self/schedstat: {e}")))?;
    let ns = text
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| Error::failed(format!("no run delay in schedstat {text:?}")))?;
    Ok(Duration::from_nanos(ns))
}

/// Opens connections to `addr` from inside `ns` as fast as it can, one after the other, for
/// `period` or `max` attempts, whichever comes first.
pub fn connect_for(ns: &Netns, addr: SocketAddr, period: Duration, max: u64) -> Result<Connects> {
    ns.run(|| {
        let mut seen = Connects::default();
        let start = Instant::now();
        let mut attempts = 0;
        while start.elapsed() < period && attempts < max {
            attempts += 1;
            let (began, waited) = (Instant::now(), run_delay()?);
            seen.attempts.push(began);
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => {
                    seen.allowed += 1;
                    drop(stream);
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    seen.refused += 1;
                    let wall = began.elapsed();
                    let took = wall.saturating_sub(run_delay()? - waited);
                    seen.slowest_refusal = seen.slowest_refusal.max(took);
                    seen.slowest_refusal_wall = seen.slowest_refusal_wall.max(wall);
                }
                Err(e) => seen.other.push(e.to_string()),
            }
        }
        Ok(seen)
    })?
}

/// `n` connects, as fast as they go.
pub fn connect_n(ns: &Netns, addr: SocketAddr, n: u64) -> Result<Connects> {
    connect_for(ns, addr, Duration::from_secs(30), n)
}
