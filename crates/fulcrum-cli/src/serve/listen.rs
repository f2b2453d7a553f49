//! The server's connections: the accept loop with its limits (connections at once, header and body timeouts, header
//! sizes), and the graceful shutdown: the first SIGTERM or SIGINT stops admission and lets requests in flight finish
//! (up to the drain timeout), a second one exits at once.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{Notify, Semaphore};

/// How long connections may take and how many there may be.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest wait for a request's headers (also for the next request on an idle keep-alive connection).
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long requests in flight may run on after the first shutdown signal.
    pub drain_timeout: Duration,
}

/// Headers a request may carry, and the bytes of its head.
const MAX_HEADERS: usize = 64;
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Whether the server is draining, and the requests in flight.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One request in flight; dropping it ends the request's count.
pub struct Flight(Arc<Drain>);

impl Drop for Flight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts a new request in, or `None` once draining (the request is to be refused).
    pub fn enter(self: &Arc<Self>) -> Option<Flight> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let flight = Flight(self.clone());
        (!self.is_draining()).then_some(flight)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight.
    async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Serves `app` on `listener` until a shutdown signal and the drain after it.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    drain: Arc<Drain>,
    limits: ConnLimits,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut deadline = None;
    loop {
        let accept = async {
            let permit = slots.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        let drained = async {
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = drain.drained() => true,
                        _ = tokio::time::sleep_until(deadline) => false,
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            (permit, accepted) = accept => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors or a connection reset before it was taken: go on serving.
                        eprintln!("warning: cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            _ = terminate.recv() => deadline = Some(begin_drain(&drain, deadline, limits)),
            _ = interrupt.recv() => deadline = Some(begin_drain(&drain, deadline, limits)),
            finished = drained => {
                if !finished {
                    eprintln!(
                        "drain timeout: {} requests still in flight are cut",
                        drain.in_flight()
                    );
                }
                break;
            }
        }
    }
    // Lets responses finish writing and closes idle connections; a second signal still ends it at once.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    eprintln!("stopped");
    Ok(())
}

/// The first shutdown signal starts the drain and returns its deadline; a second one exits at once.
fn begin_drain(
    drain: &Drain,
    deadline: Option<tokio::time::Instant>,
    limits: ConnLimits,
) -> tokio::time::Instant {
    if deadline.is_some() {
        eprintln!(
            "second signal: exiting now, cutting {} requests",
            drain.in_flight()
        );
        std::process::exit(1);
    }
    drain.draining.store(true, Ordering::SeqCst);
    eprintln!(
        "shutting down: refusing new requests, waiting up to {} s for {} in flight (a second signal exits at once)",
        limits.drain_timeout.as_secs(),
        drain.in_flight()
    );
    tokio::time::Instant::now() + limits.drain_timeout
}
