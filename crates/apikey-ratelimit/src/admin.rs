//! The admin port: `GET /healthz` and `GET /metrics` over plain HTTP/1.1,
//! for load balancers, compose health checks and Prometheus.
//!
//! Small enough to write by hand: one request per connection, read up to
//! the end of its head (at most 8 KiB, within 5 s), answered and closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::store::Counters;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub async fn serve<C: Counters>(
    listener: TcpListener,
    limiter: Arc<Limiter<C>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (limiter, metrics) = (limiter.clone(), metrics.clone());
                tokio::spawn(async move {
                    let _ = answer(stream, &limiter, &metrics).await;
                });
            }
        }
    }
}

async fn answer<C: Counters>(
    mut stream: TcpStream,
    limiter: &Limiter<C>,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (status, body) = match request_target(&head) {
        Some(("GET", "/healthz")) => match limiter.counters().ping().await {
            Ok(()) => ("200 OK", "ok\n".to_owned()),
            Err(error) => ("503 Service Unavailable", format!("redis: {error}\n")),
        },
        Some(("GET", "/metrics")) => ("200 OK", metrics.render()),
        Some(_) => ("404 Not Found", "GET /healthz or /metrics\n".to_owned()),
        None => ("400 Bad Request", "malformed request\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..read).unwrap_or_default());
    }
    Ok(head)
}

/// The method and path (query string dropped) of a request head.
fn request_target(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?.starts_with("HTTP/1.").then_some(())?;
    Some((method, target.split('?').next().unwrap_or(target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_gives_method_and_path() {
        assert_eq!(
            request_target(b"GET /metrics?x=1 HTTP/1.1\r\nhost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_target(b"GET /healthz HTTP/1.0\r\n\r\n"),
            Some(("GET", "/healthz"))
        );
        assert_eq!(request_target(b"nonsense\r\n\r\n"), None);
        assert_eq!(request_target(b"GET / SPDY/3\r\n\r\n"), None);
    }
}
