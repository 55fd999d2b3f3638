//! The daemon's lifecycle as one call: [`run`] starts it, applies reloads, drains and stops it
//! as [`Command`]s ask (`chatd run` turns signals into them).

use super::*;

/// How long a cluster's stopping node waits for its partitions to be handed over
/// ([`Daemon::hand_over`]) before it says goodbye to its connections.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a stop goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: `/readyz` answers 503 and the daemon serves on for `shutdown_drain_secs`;
    /// a cluster's node then hands its partitions over (at most [`HAND_OVER_TIMEOUT`]);
    /// then it says goodbye to every connection and waits up to `shutdown_grace_secs` for
    /// them ([`Daemon::stop`]). A second `Graceful` ends a wait, a `Fast` stops at once.
    Graceful,
    /// SIGINT: goodbye to every connection without waiting ([`Daemon::stop_fast`]).
    Fast,
}

/// What the process asks of a daemon run by [`run`].
pub enum Command {
    /// SIGHUP: apply this configuration ([`Daemon::reload`]); the outcome goes to `done`.
    /// Refused once a stop has begun.
    Reload {
        /// The configuration, loaded and validated.
        config: Box<Config>,
        /// Hears what was applied, or why nothing was.
        done: tokio::sync::oneshot::Sender<Result<Reloaded, Error>>,
    },
    /// Stop the daemon; [`run`] returns once it has.
    Stop(Stop),
}

/// Runs a daemon with `config` until a [`Command::Stop`] (or until `commands` closes, which
/// counts as a graceful stop), applying reloads meanwhile: the daemon's whole lifecycle, as
/// `chatd run` drives it from signals. The stop itself blocks the calling thread (at most
/// `shutdown_grace_secs` plus [`STOP_HARD_TIMEOUT`]).
///
/// # Errors
/// When the daemon cannot start.
pub async fn run(
    config: Config,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
) -> Result<(), Error> {
    let mut daemon = Daemon::start(config)?;
    let mut stop = loop {
        match commands.recv().await {
            Some(Command::Reload { config, done }) => {
                let _ = done.send(daemon.reload(*config));
            }
            Some(Command::Stop(stop)) => break stop,
            None => break Stop::Graceful,
        }
    };
    if stop == Stop::Graceful {
        let drain = daemon.drain();
        if !drain.is_zero() {
            tracing::info!(
                seconds = drain.as_secs(),
                "stopping: /readyz answers 503; serving on before closing connections"
            );
            stop = wait_stopping(&mut commands, tokio::time::sleep(drain)).await;
        }
    }
    // A cluster's node gives its partitions to the other nodes while its clients stay
    // connected, so that none waits out its lease.
    if stop == Stop::Graceful
        && let Some(handed) = daemon.hand_over()
    {
        tracing::info!("stopping: handing the partitions over to the other nodes");
        let handed = async {
            match tokio::time::timeout(HAND_OVER_TIMEOUT, handed).await {
                Ok(Ok(HandOver::Done)) => {
                    tracing::info!("stopping: the partitions are handed over")
                }
                Ok(Ok(HandOver::Kept(kept))) => tracing::info!(
                    kept,
                    "stopping: no other node to hand the partitions over to; they stay until the node stops"
                ),
                Ok(Ok(HandOver::NotJoined)) => {
                    tracing::info!("stopping: not in the cluster; no partition to hand over")
                }
                Ok(Ok(HandOver::Failed) | Err(_)) => tracing::warn!(
                    "stopping: the partitions were not handed over; they move when the node stops"
                ),
                Err(_) => tracing::warn!(
                    seconds = HAND_OVER_TIMEOUT.as_secs(),
                    "stopping: the partitions were not handed over in time; the rest move when the node stops"
                ),
            }
        };
        stop = wait_stopping(&mut commands, handed).await;
    }
    match stop {
        Stop::Graceful => {
            tracing::info!("stopping: draining connections");
            daemon.stop();
        }
        Stop::Fast => {
            tracing::info!("stopping: closing connections now");
            daemon.stop_fast();
        }
    }
    Ok(())
}

/// Waits for `until` while a stop has begun: a reload is refused, a second graceful stop
/// ends the wait, a fast one stops at once.
async fn wait_stopping(
    commands: &mut tokio::sync::mpsc::Receiver<Command>,
    until: impl std::future::Future<Output = ()>,
) -> Stop {
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => return Stop::Graceful,
            command = commands.recv() => match command {
                Some(Command::Stop(stop)) => return stop,
                Some(Command::Reload { done, .. }) => {
                    let _ = done.send(Err(Error::Stopping));
                }
                None => {
                    (&mut until).await;
                    return Stop::Graceful;
                }
            },
        }
    }
}
