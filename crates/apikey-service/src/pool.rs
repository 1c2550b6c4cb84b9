//! The service's connections: one writer and a few readers, each used by
//! one blocking task at a time.
//!
//! SQLite allows one writer at a time per database anyway; a single writer
//! connection behind a mutex makes the service's own writes queue in
//! memory instead of spinning on the file lock, while other processes (a
//! CLI with `--db`) still take their turn through the busy timeout. WAL
//! readers never wait for the writer, so lists and gets run beside a long
//! import. Database calls block, so they run on tokio's blocking threads.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;

use crate::db;
use crate::error::{ApiError, Kind};

/// Reader connections.
const READERS: usize = 4;

/// The writer and the readers.
#[derive(Debug)]
pub struct Pool {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Pool {
    /// Opens the database (creating and migrating it when needed).
    pub fn open(path: &Path) -> Result<Self, ApiError> {
        let writer = db::open(path)?;
        let readers = (0..READERS)
            .map(|_| db::open(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            writer: Mutex::new(writer),
            readers,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `operation` on the writer, on a blocking thread.
    pub async fn write<T, F>(self: &Arc<Self>, operation: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let pool = Arc::clone(self);
        run_blocking(move || {
            // A panic mid-transaction rolled it back when the transaction
            // was dropped: the connection is sound to use again.
            let mut connection = pool.writer.lock().unwrap_or_else(PoisonError::into_inner);
            operation(&mut connection)
        })
        .await
    }

    /// Runs `operation` on a reader, on a blocking thread.
    pub async fn read<T, F>(self: &Arc<Self>, operation: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let pool = Arc::clone(self);
        run_blocking(move || {
            let index = pool.next.fetch_add(1, Ordering::Relaxed) % pool.readers.len().max(1);
            match pool.readers.get(index) {
                Some(reader) => {
                    let connection = reader.lock().unwrap_or_else(PoisonError::into_inner);
                    operation(&connection)
                }
                None => Err(ApiError::new(Kind::Internal, "no reader connection")),
            }
        })
        .await
    }
}

async fn run_blocking<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        ApiError::new(Kind::Internal, format!("a database task failed: {error}"))
    })?
}
