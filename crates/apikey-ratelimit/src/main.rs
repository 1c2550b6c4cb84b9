//! `apikey-ratelimit`: Envoy's rate-limit service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) for the
//! fleet-wide limits of the API-key filter (contract §6), counting exactly
//! in Redis.
//!
//! Each descriptor that carries a `limit` override is counted in a fixed
//! window of its unit by one atomic Redis script (see [`store`]), so any
//! number of these servers on one Redis admit exactly the limit per
//! window. A descriptor without a limit is not limited. A Redis failure is
//! gRPC `UNAVAILABLE`. `/healthz` and `/metrics` are served on a second
//! port. SIGTERM and SIGINT stop it cleanly: no new connections, calls in
//! flight finished. README.md beside this crate has the flags and the
//! reasoning.

mod admin;
mod args;
mod decision;
mod grpc;
mod limiter;
mod metrics;
mod password;
mod proto;
mod store;
mod window;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::args::{RedisAuth, Settings};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::store::Redis;

fn main() -> ExitCode {
    let settings = match args::from_process() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("apikey-ratelimit: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("apikey-ratelimit: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("apikey-ratelimit: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    // Read before anything listens: a missing or empty file stops the
    // server at start, not at its first request.
    let password = match &settings.redis_auth {
        RedisAuth::PasswordFile(path) => Some(password::read_file(path)?),
        RedisAuth::NoAuth => {
            eprintln!("apikey-ratelimit: --redis-no-auth: connecting to Redis without a password");
            None
        }
    };
    let store = Redis::new(&settings.redis, password.as_ref(), settings.redis_timeout)
        .map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::default());
    let limiter = Arc::new(Limiter::new(store, metrics.clone()));
    let grpc_listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let admin_listener = TcpListener::bind(settings.admin)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.admin))?;
    let grpc_address = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_address = admin_listener.local_addr().map_err(|e| e.to_string())?;
    // Before the line that says the server is up: whoever reads it may stop
    // the server at once, and SIGTERM must then be a clean shutdown, not
    // the default action that kills the process.
    let handlers = install_signal_handlers();
    println!("apikey-ratelimit listening grpc={grpc_address} admin={admin_address}");
    let _ = std::io::stdout().flush();

    let (stop, stopped) = watch::channel(false);
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        limiter.clone(),
        metrics,
        stopped.clone(),
    ));
    let signals = tokio::spawn(async move {
        let reason = shutdown_signal(handlers).await;
        eprintln!("apikey-ratelimit: {reason}, shutting down");
        let _ = stop.send(true);
    });
    let mut grpc_stopped = stopped;
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let served = Server::builder()
        .serve_with_incoming_shutdown(grpc::server(limiter), incoming, async move {
            let _ = grpc_stopped.wait_for(|stop| *stop).await;
        })
        .await;
    signals.abort();
    let _ = admin.await;
    served.map_err(|e| format!("gRPC server failed: {e}"))
}

/// Handlers for SIGTERM and SIGINT; from now on neither kills the process.
fn install_signal_handlers() -> Option<(Signal, Signal)> {
    Some((
        signal(SignalKind::terminate()).ok()?,
        signal(SignalKind::interrupt()).ok()?,
    ))
}

/// Waits for SIGTERM or SIGINT and names it.
async fn shutdown_signal(handlers: Option<(Signal, Signal)>) -> &'static str {
    let Some((mut term, mut int)) = handlers else {
        // Without signal handlers the process still dies on either signal.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
