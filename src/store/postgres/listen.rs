//! The LISTEN session: one dedicated connection per store that listens on
//! the tasks and deliveries channels and turns the notifications meant for
//! this store's schema into [`Wake`]s on a broadcast channel. When the
//! connection breaks (the server restarted, the backend was terminated) it
//! reconnects by itself with a growing back-off, listens again, and sends
//! both wake-ups once, since notifications sent meanwhile were lost.
//!
//! May call: `conn` (the target to connect to).

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::conn::{Target, Tls};
use super::{DELIVERIES_CHANNEL, TASKS_CHANNEL};
use crate::store::Wake;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Wake-ups a slow subscriber may fall behind by before it skips some.
const CAPACITY: usize = 64;

/// The running session, as the store holds it: stops when dropped.
pub(super) struct Listener {
    tx: broadcast::Sender<Wake>,
    /// The session's server process ID while connected, else 0 (tests end
    /// it with `pg_terminate_backend`).
    #[cfg(test)]
    pid: Arc<AtomicI32>,
    _stop: DropGuard,
}

impl Listener {
    pub fn subscribe(&self) -> broadcast::Receiver<Wake> {
        self.tx.subscribe()
    }

    #[cfg(test)]
    pub fn backend_pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }
}

/// Starts the session for `target`'s schema on the current runtime.
pub(super) fn spawn(target: Target) -> Listener {
    let (tx, _) = broadcast::channel(CAPACITY);
    let stop = CancellationToken::new();
    let pid = Arc::new(AtomicI32::new(0));
    tokio::spawn(run(target, tx.clone(), stop.clone(), pid.clone()));
    Listener {
        tx,
        #[cfg(test)]
        pid,
        _stop: stop.drop_guard(),
    }
}

/// Why a session ended.
type SessionError = Box<dyn std::error::Error + Send + Sync>;

async fn run(
    target: Target,
    tx: broadcast::Sender<Wake>,
    stop: CancellationToken,
    pid: Arc<AtomicI32>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut sessions = 0u64;
    loop {
        let mut listening = false;
        let ended = match &target.tls {
            Tls::Off => session(&target, NoTls, &tx, &stop, &pid, sessions, &mut listening).await,
            Tls::On(tls) => {
                session(
                    &target,
                    tls.clone(),
                    &tx,
                    &stop,
                    &pid,
                    sessions,
                    &mut listening,
                )
                .await
            }
        };
        pid.store(0, Ordering::SeqCst);
        if listening {
            sessions += 1;
            backoff = MIN_BACKOFF;
        }
        match ended {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = %e,
                retry_in = ?backoff,
                "store: the LISTEN connection broke; reconnecting"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: LISTEN, then forward notifications until it breaks
/// (an error) or the store is dropped (`Ok`).
async fn session<T>(
    target: &Target,
    tls: T,
    tx: &broadcast::Sender<Wake>,
    stop: &CancellationToken,
    pid: &AtomicI32,
    earlier_sessions: u64,
    listening: &mut bool,
) -> Result<(), SessionError>
where
    T: MakeTlsConnect<Socket>,
{
    let (client, mut conn) = tokio::select! {
        c = target.config.connect(tls) => c?,
        _ = stop.cancelled() => return Ok(()),
    };
    let schema = target.schema.as_str();
    let forward = |m: AsyncMessage| {
        if let AsyncMessage::Notification(n) = m
            && n.payload() == schema
        {
            let wake = match n.channel() {
                TASKS_CHANNEL => Wake::Tasks,
                DELIVERIES_CHANNEL => Wake::Deliveries,
                _ => return,
            };
            // No subscriber yet is fine.
            let _ = tx.send(wake);
        }
    };
    // The connection must be driven while the setup queries run.
    let setup = async {
        client
            .batch_execute(&format!(
                "LISTEN {TASKS_CHANNEL}; LISTEN {DELIVERIES_CHANNEL}"
            ))
            .await?;
        let row = client.query_one("SELECT pg_backend_pid()", &[]).await?;
        Ok::<i32, tokio_postgres::Error>(row.get(0))
    };
    tokio::pin!(setup);
    let backend = loop {
        tokio::select! {
            r = &mut setup => break r?,
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                Some(Ok(m)) => forward(m),
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the server closed the connection".into()),
            },
            _ = stop.cancelled() => return Ok(()),
        }
    };
    pid.store(backend, Ordering::SeqCst);
    *listening = true;
    if earlier_sessions > 0 {
        // Whatever was notified while no one listened is lost: look again.
        let _ = tx.send(Wake::Tasks);
        let _ = tx.send(Wake::Deliveries);
    }
    loop {
        tokio::select! {
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                Some(Ok(m)) => forward(m),
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the server closed the connection".into()),
            },
            _ = stop.cancelled() => return Ok(()),
        }
    }
}
