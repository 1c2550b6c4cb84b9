//! The admin port: `GET /healthz` and `GET /metrics` over HTTP/1.1, served
//! by hyper (which tonic already brings), for load balancers, compose
//! health checks and Prometheus.
//!
//! hyper rather than a web framework: two fixed paths need no router, and
//! its connection builder bounds how long a client may take to send a
//! request's head (a stalled client cannot hold a connection, nor hold up
//! the shutdown). When the server stops, this port stops accepting,
//! answers the requests in flight, closes idle connections and gives up
//! on the rest after [`DRAIN_TIMEOUT`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::limiter::Limiter;
use crate::metrics::{self, Metrics};
use crate::store::Counters;

/// How long a client may take to send a request's head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping server waits for the admin requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const TEXT: &str = "text/plain; charset=utf-8";

/// Serves the admin endpoints on `listener` until `shutdown` turns true,
/// then drains its connections (at most [`DRAIN_TIMEOUT`]).
pub async fn serve<C: Counters>(
    listener: TcpListener,
    limiter: Arc<Limiter<C>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (limiter, metrics) = (limiter.clone(), metrics.clone());
                let service = service_fn(move |request| {
                    let (limiter, metrics) = (limiter.clone(), metrics.clone());
                    async move {
                        let path = request.uri().path();
                        Ok::<_, Infallible>(answer(request.method(), path, &limiter, &metrics).await)
                    }
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                // Its error is a client's (gone, too slow, malformed):
                // nothing to do about it.
                tokio::spawn(async move { let _ = connection.await; });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// The answer to `method` on `path` (without its query string).
async fn answer<C: Counters>(
    method: &Method,
    path: &str,
    limiter: &Limiter<C>,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/healthz") => match limiter.counters().ping().await {
            Ok(()) => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            Err(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("redis: {error}\n"),
            ),
        },
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "GET /healthz or /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Charge, Counted};
    use crate::store::StoreError;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Counters whose `ping` fails while `down` is set.
    #[derive(Default)]
    struct Pinged {
        down: AtomicBool,
    }

    impl Counters for Pinged {
        async fn charge(&self, _: &Charge) -> Result<Counted, StoreError> {
            Err(StoreError("not used here".into()))
        }

        async fn ping(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::Relaxed) {
                Err(StoreError("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    /// The admin port on a free loopback port, and what stops it.
    struct Admin {
        address: std::net::SocketAddr,
        limiter: Arc<Limiter<Pinged>>,
        metrics: Arc<Metrics>,
        stop: watch::Sender<bool>,
        served: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Admin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let limiter = Arc::new(Limiter::new(Pinged::default(), metrics.clone()));
        let (stop, stopped) = watch::channel(false);
        let served = tokio::spawn(serve(listener, limiter.clone(), metrics.clone(), stopped));
        Admin {
            address,
            limiter,
            metrics,
            stop,
            served,
        }
    }

    /// Sends `request` as is and returns the whole answer (the server
    /// closes the connection: every request says `connection: close`).
    async fn exchange(address: std::net::SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        exchange(
            address,
            &format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"),
        )
        .await
    }

    #[tokio::test]
    async fn healthz_says_whether_the_store_answers() {
        let admin = start().await;
        let answer = get(admin.address, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        admin.limiter.counters().down.store(true, Ordering::Relaxed);
        let answer = get(admin.address, "/healthz?verbose").await;
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with("\r\n\r\nredis: connection refused\n"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let admin = start().await;
        admin.metrics.add(metrics::Counter::Requests);
        let answer = get(admin.address, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains(&format!("\r\ncontent-type: {}\r\n", metrics::CONTENT_TYPE)),
            "{answer}"
        );
        assert!(
            answer.contains("\napikey_ratelimit_requests_total 1\n"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_not_found_and_garbage_is_refused() {
        let admin = start().await;
        for answer in [
            get(admin.address, "/").await,
            exchange(
                admin.address,
                "POST /metrics HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await,
        ] {
            assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        }
        let answer = exchange(admin.address, "nonsense\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stalls_in_its_request_head_is_disconnected() {
        let admin = start().await;
        let mut stalled = TcpStream::connect(admin.address).await.unwrap();
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nhost:")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut answer = Vec::new();
        // The paused clock runs ahead whenever nothing else can: the read
        // ends when hyper's head timer closes the connection.
        tokio::time::timeout(READ_TIMEOUT * 4, stalled.read_to_end(&mut answer))
            .await
            .expect("the stalled connection was never closed")
            .ok();
        assert!(
            started.elapsed() >= READ_TIMEOUT,
            "disconnected after {:?}, before the head timeout",
            started.elapsed()
        );
        assert!(
            !answer.starts_with(b"HTTP/1.1 200"),
            "a partial head was answered: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    #[tokio::test]
    async fn a_stop_closes_idle_connections_and_ends_the_server() {
        let admin = start().await;
        // A kept-alive connection that has been answered and sits idle.
        let mut idle = TcpStream::connect(admin.address).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 64];
        let read = idle.read(&mut first).await.unwrap();
        assert!(first[..read].starts_with(b"HTTP/1.1 200 OK"), "no answer");
        let asked = std::time::Instant::now();
        admin.stop.send(true).unwrap();
        // The bound only keeps a broken drain from hanging the test.
        tokio::time::timeout(DRAIN_TIMEOUT * 2, admin.served)
            .await
            .expect("the admin server did not stop")
            .unwrap();
        assert!(
            asked.elapsed() < DRAIN_TIMEOUT,
            "the stop waited {:?}, out to the drain bound: the idle connection was not closed",
            asked.elapsed()
        );
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest).await.unwrap();
        assert!(
            TcpStream::connect(admin.address).await.is_err(),
            "the stopped server still accepts connections"
        );
    }
}
