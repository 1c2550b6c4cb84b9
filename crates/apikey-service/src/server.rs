//! `apikey serve`: opens the database, reads the tokens, binds the
//! address, and serves until SIGTERM or SIGINT, then finishes the requests
//! in flight (an import commits or rolls back whole) and closes the
//! database.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::auth::Tokens;
use crate::feed::{self, Feed};
use crate::feed_lines;
use crate::http::{router, App, Limits};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::{db, settings_store};

/// `apikey serve`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The SQLite file (created when missing).
    pub db: PathBuf,
    /// `HOST:PORT` to listen on (port 0: any free port, printed).
    pub listen: String,
    /// The file holding the admin token.
    pub admin_token_file: PathBuf,
    /// The file holding the feed token.
    pub feed_token_file: PathBuf,
    /// Body size limits.
    pub limits: Limits,
    /// One stderr line per request.
    pub access_log: bool,
}

/// Runs the service on its own runtime until a signal stops it.
pub fn run(options: &Options) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("apikey-serve")
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(serve(options))
}

async fn serve(options: &Options) -> Result<(), String> {
    let tokens = Tokens::load(&options.admin_token_file, &options.feed_token_file)?;
    let pool = Pool::open(&options.db).map_err(|error| error.to_string())?;
    let pool = Arc::new(pool);
    let (version, keys) = pool
        .read(|connection| {
            let version = db::schema_version(connection)?;
            let keys: i64 =
                connection.query_row("SELECT count(*) FROM keys", [], |row| row.get(0))?;
            settings_store::load(connection)?;
            Ok((version, keys))
        })
        .await
        .map_err(|error| error.to_string())?;
    let spool_dir = match options.db.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let feed = Arc::new(Feed::new());
    // Reads the generation and builds the digest before the first gateway
    // asks, then keeps both current.
    tokio::spawn(feed::follow(Arc::clone(&feed), Arc::clone(&pool)));
    // Stores the feed lines of keys written without one (all of them in a
    // database just migrated to schema 4; since, those other processes
    // wrote), in the background: they are served right meanwhile.
    tokio::spawn(feed_lines::fill(Arc::clone(&feed), Arc::clone(&pool)));
    let app = Arc::new(App {
        pool,
        feed,
        tokens,
        metrics: Metrics::new(),
        limits: options.limits,
        spool_dir,
        access_log: options.access_log,
    });
    // Handlers first, then the address: a signal sent as soon as the
    // "listening" line appears is never lost.
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| format!("cannot handle SIGTERM: {error}"))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|error| format!("cannot handle SIGINT: {error}"))?;
    let listener = TcpListener::bind(&options.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", options.listen))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("cannot read the bound address: {error}"))?;
    eprintln!(
        "apikey serve: listening on http://{address} (database {}, schema version {version}, {keys} keys)",
        options.db.display()
    );
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => eprintln!("apikey serve: SIGTERM: finishing requests in flight"),
                _ = interrupt.recv() => eprintln!("apikey serve: SIGINT: finishing requests in flight"),
            }
        })
        .await
        .map_err(|error| format!("the server failed: {error}"))?;
    eprintln!("apikey serve: stopped");
    Ok(())
}
