//! Logs for the journal: lines on standard error, ANSI colour only when it is a terminal,
//! optionally one JSON object per line (`log_format = "json"`), a filter a reload can
//! change, and [`Throttle`] so that an error repeated by every request under a fault (a
//! full disk, a broken read) is logged once per interval with a count.

use parking_lot::Mutex;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{Config, LogFormat};

/// Least time between two lines of one repeated error.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The installed subscriber's reloadable filter.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over `log` in the configuration, on reloads too.
    from_env: bool,
}

impl Logging {
    /// Installs the process-wide subscriber for `config` (`RUST_LOG` wins over `log`).
    ///
    /// # Errors
    /// When a subscriber is installed already.
    pub fn init(config: &Config) -> Result<Logging, String> {
        let from_env = std::env::var_os("RUST_LOG").is_some();
        let filter = if from_env {
            EnvFilter::try_from_default_env().map_err(|e| format!("RUST_LOG: {e}"))?
        } else {
            parse_filter(&config.log)?
        };
        let (filter_layer, handle) = reload::Layer::new(filter);
        let ansi = std::io::stderr().is_terminal();
        let (text, json) = match config.log_format {
            LogFormat::Text => (
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(ansi),
                ),
                None,
            ),
            LogFormat::Json => (
                None,
                Some(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr)
                        .with_ansi(false),
                ),
            ),
        };
        tracing_subscriber::registry()
            .with(filter_layer)
            .with(text)
            .with(json)
            .try_init()
            .map_err(|e| e.to_string())?;
        Ok(Logging {
            filter: handle,
            from_env,
        })
    }

    /// Applies the filter `log` (the configuration's; ignored while `RUST_LOG` is set).
    ///
    /// # Errors
    /// When the filter does not parse; the running one stays.
    pub fn reload(&self, log: &str) -> Result<(), String> {
        if self.from_env {
            return Ok(());
        }
        let filter = parse_filter(log)?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(text).map_err(|e| format!("log filter {text:?}: {e}"))
}

/// Lets one line through per interval and counts the ones it holds back.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// A throttle letting one line through per `interval`.
    #[must_use]
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            state: parking_lot::const_mutex(ThrottleState {
                last: None,
                held: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be logged at `now`, with `n` the lines held back since the
    /// last one; `None` when this one is held back.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        match state.last {
            Some(last) if now.duration_since(last) < self.interval => {
                state.held += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held))
            }
        }
    }
}

/// `tracing::error!` (or another level) at most once per [`REPEAT_INTERVAL`] for this call
/// site, with a `repeated` field counting the lines held back since the last.
macro_rules! throttled {
    ($level:ident, $($arg:tt)+) => {{
        static THROTTLE: $crate::logging::Throttle =
            $crate::logging::Throttle::new($crate::logging::REPEAT_INTERVAL);
        if let Some(repeated) = THROTTLE.admit(std::time::Instant::now()) {
            tracing::$level!(repeated, $($arg)+);
        }
    }};
}
pub(crate) use throttled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.admit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(throttle.admit(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(throttle.admit(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(throttle.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit(t0 + Duration::from_secs(25)), Some(1));
    }
}
