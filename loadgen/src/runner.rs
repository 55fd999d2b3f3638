//! Drives a run: client threads, ramp-up, conversation setup, then one measured phase (or
//! the `--find-max` steps), the drain and the check.
//!
//! Threads: `--threads` client threads (`client-N`), each a current-thread tokio runtime
//! with its own quinn endpoints (`--sockets-per-thread` UDP sockets), holding its share of the clients and one
//! scheduler for its share of the senders; the calling thread coordinates: it collects the
//! threads' metrics once a second, feeds the checker and prints progress.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chat_protocol::{ConversationId, OpId, Request, Response, RoomId, UserId};
use chat_sdk::Trust;
use chat_sdk::token::SigningKey;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::check::{Checker, ClientId};
use crate::client::{self, Command, Context, Credentials, Shared};
use crate::metrics::{self, Clock, Metrics, Record};
use crate::options::{Options, OptionsError, Scenario, Target};
use crate::peer;
use crate::plan::{self, Group};
use crate::procfs;
use crate::report::{Idle, Latency, Step, Summary, progress};
use crate::search::Search;
use crate::ticker::Ticker;

/// Why a run could not be carried out (as opposed to a run that found problems, which is a
/// [`Summary`] with `correct: false` or unsustainable steps).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options.
    #[error("options: {0}")]
    Options(#[from] OptionsError),
    /// TLS or token configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Clients could not connect or set up their conversations.
    #[error("setup: {0}")]
    Setup(String),
    /// A thread or an endpoint could not be started.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A client thread.
struct Worker {
    handle: tokio::runtime::Handle,
    /// `--sockets-per-thread` endpoints, each its own UDP socket: the server's SO_REUSEPORT
    /// spreads connections over its shards by source address, as it would real clients.
    /// Empty for a peer target (its clients speak TCP).
    endpoints: Vec<quinn::Endpoint>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(
        index: usize,
        config: Option<quinn::ClientConfig>,
        sockets: usize,
    ) -> Result<Worker, Error> {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("client-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let endpoints = {
                    let _entered = runtime.enter();
                    let sockets = if config.is_some() { sockets.max(1) } else { 0 };
                    (0..sockets)
                        .map(|_| {
                            let mut endpoint = quinn::Endpoint::client(
                                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                            )?;
                            if let Some(config) = &config {
                                endpoint.set_default_client_config(config.clone());
                            }
                            Ok(endpoint)
                        })
                        .collect::<std::io::Result<Vec<_>>>()
                };
                let endpoints = match endpoints {
                    Ok(endpoints) => endpoints,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok((runtime.handle().clone(), endpoints.clone())));
                runtime.block_on(async move {
                    let _ = stop_rx.await;
                    for endpoint in &endpoints {
                        endpoint.close(0u32.into(), b"done");
                    }
                    for endpoint in &endpoints {
                        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle())
                            .await;
                    }
                });
            })?;
        let (handle, endpoints) = started_rx
            .recv()
            .map_err(|_| Error::Setup("a client thread died while starting".into()))??;
        Ok(Worker {
            handle,
            endpoints,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// This thread's metrics since the last collection.
    async fn collect(&self) -> Metrics {
        self.handle
            .spawn(async { metrics::take() })
            .await
            .unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A conversation of the run: its id and clients.
struct Conversation {
    id: ConversationId,
    group: Group,
}

/// Everything set up before the measured phases.
struct Run {
    options: Options,
    context: Arc<Context>,
    workers: Vec<Worker>,
    clients: Vec<Arc<Shared>>,
    conversations: Vec<Conversation>,
    /// This run's prefix of user and room names.
    prefix: String,
    started: Instant,
    /// What the first connections measured (their handshakes), shown with every step.
    initial: Metrics,
}

/// Runs the load test `options` describe. Call from inside a tokio runtime (the
/// coordinator's); the client threads have their own.
///
/// # Errors
/// Bad options, a configuration that cannot be used, or clients that cannot connect or set
/// up. Lost or misordered messages are not errors: they are in the summary.
pub async fn run(options: Options) -> Result<Summary, Error> {
    options.validate()?;
    // The peers' clients speak TCP: no QUIC endpoints, no certificate.
    let config = if options.target.is_peer() {
        None
    } else {
        Some(client_config(&options)?)
    };
    let prefix = run_prefix();
    let (stop_tx, stop_rx) = watch::channel(false);
    let context = Arc::new(Context {
        clock: Clock::new(),
        servers: std::iter::once(options.server)
            .chain(options.also.iter().copied())
            .collect(),
        server_name: options.server_name.clone(),
        size: options.size,
        check: options.target.is_checked(),
        churn_pause: Duration::from_millis(options.churn_pause_ms),
        stop: stop_rx,
        peer: options.target.is_peer().then(|| peer::Settings {
            target: options.target,
            qos: options.qos,
            prefix: prefix.clone(),
        }),
    });
    if let Some(settings) = &context.peer {
        peer::prepare(&context, settings)
            .await
            .map_err(Error::Setup)?;
    }
    let workers = (0..options.threads)
        .map(|i| Worker::start(i, config.clone(), options.sockets_per_thread))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let rss_before = options.server_pid.and_then(procfs::usage);
    let clients = connect_all(&options, &context, &workers, &prefix).await;
    let result = match clients {
        Ok(clients) => {
            let mut run = Run {
                options,
                context,
                workers,
                clients,
                conversations: Vec::new(),
                prefix,
                started,
                initial: Metrics::default(),
            };
            let summary = run.measure(rss_before).await;
            let _ = stop_tx.send(true);
            summary
        }
        Err(e) => {
            let _ = stop_tx.send(true);
            Err(e)
        }
    };
    // Workers stop when dropped here: each closes its endpoint and waits up to 2 s for the
    // close to reach the server, blocking this (the coordinating) thread meanwhile.
    result
}

fn client_config(options: &Options) -> Result<quinn::ClientConfig, Error> {
    let mut config = chat_sdk::quic_client_config(&Trust::CaFile(options.ca.clone()))
        .map_err(|e| Error::Config(e.to_string()))?;
    let idle = Duration::from_millis(options.idle_timeout_ms);
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some((idle / 3).min(Duration::from_secs(5))));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).map_err(|e| Error::Config(e.to_string()))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The credentials of client `index`.
fn credentials(
    options: &Options,
    key: Option<&SigningKey>,
    prefix: &str,
    index: usize,
) -> Credentials {
    let name = format!("{prefix}-{index}");
    match (options.target, key) {
        (Target::Floor, _) => Credentials::Floor,
        (Target::Chatd, Some(key)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Credentials::Token(key.mint(&name, now, now + 86_400))
        }
        (Target::Chatd, None) => Credentials::Register(name),
        // The peers' clients (crate::peer) are anonymous.
        (_, _) => Credentials::Floor,
    }
}

fn signing_key(options: &Options) -> Result<Option<SigningKey>, Error> {
    let secret = match (&options.token_secret, &options.token_secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
        (None, None) => return Ok(None),
    };
    SigningKey::from_hex(&options.token_key_id, &secret)
        .map(Some)
        .map_err(|e| Error::Config(e.to_string()))
}

/// A name prefix unique to this run, so runs against one daemon never share users or rooms.
fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("lg{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// Opens every client's connection, spread over the ramp-up, at most
/// `--handshake-concurrency` at once.
async fn connect_all(
    options: &Options,
    context: &Arc<Context>,
    workers: &[Worker],
    prefix: &str,
) -> Result<Vec<Arc<Shared>>, Error> {
    let key = signing_key(options)?;
    let count = options.client_count();
    let gate = Arc::new(Semaphore::new(options.handshake_concurrency));
    let spacing = Duration::from_secs_f64(options.ramp_up / count as f64);
    let begin = Instant::now();
    let mut clients = Vec::with_capacity(count);
    let mut waiting = Vec::with_capacity(count);
    for index in 0..count {
        tokio::time::sleep_until(
            (begin + spacing * u32::try_from(index).unwrap_or(u32::MAX)).into(),
        )
        .await;
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .map_err(|_| Error::Setup("closed".into()))?;
        let (commands_tx, commands_rx) = mpsc::channel(client::QUEUE);
        let shared = Arc::new(Shared {
            id: ClientId::try_from(index).unwrap_or(ClientId::MAX),
            commands: commands_tx,
            user: std::sync::atomic::AtomicU64::new(0),
            churn: tokio::sync::Notify::new(),
            outstanding: std::sync::atomic::AtomicUsize::new(0),
        });
        let worker = &workers[index % workers.len()];
        let (ready_tx, ready_rx) = oneshot::channel();
        if let Some(settings) = &context.peer {
            worker.handle.spawn(peer::run(
                Arc::clone(context),
                settings.clone(),
                Arc::clone(&shared),
                commands_rx,
                ready_tx,
            ));
        } else {
            worker.handle.spawn(client::run(
                Arc::clone(context),
                worker.endpoints[index / workers.len() % worker.endpoints.len()].clone(),
                Arc::clone(&shared),
                credentials(options, key.as_ref(), prefix, index),
                commands_rx,
                ready_tx,
            ));
        }
        waiting.push(tokio::spawn(async move {
            let result = ready_rx.await;
            drop(permit);
            result
        }));
        clients.push(shared);
    }
    let mut failures = 0usize;
    let mut first = None;
    for wait in waiting {
        match wait.await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                failures += 1;
                first.get_or_insert(e);
            }
            _ => {
                failures += 1;
                first.get_or_insert_with(|| "the client task ended".into());
            }
        }
    }
    if let Some(first) = first {
        return Err(Error::Setup(format!(
            "{failures} of {count} clients could not connect; the first: {first}"
        )));
    }
    Ok(clients)
}

/// Asks client `shared` to make `request`; its answer.
async fn request(shared: &Shared, request: Request) -> Result<Response, String> {
    let (reply, answer) = oneshot::channel();
    shared
        .commands
        .send(Command::Request { request, reply })
        .await
        .map_err(|_| "the client is gone".to_owned())?;
    answer.await.map_err(|_| "the client is gone".to_owned())?
}

impl Run {
    async fn measure(&mut self, rss_before: Option<procfs::Usage>) -> Result<Summary, Error> {
        self.setup().await?;
        for worker in &self.workers {
            let mut m = worker.collect().await;
            m.records.clear();
            self.initial.merge(&m);
        }
        if self.initial.failures() > 0 {
            let m = &self.initial;
            let codes: Vec<String> = m
                .errors
                .iter()
                .map(|(code, n)| format!("{} x{n}", chat_protocol::ErrorCode(*code)))
                .collect();
            return Err(Error::Setup(format!(
                "{} errors while connecting and setting up: error responses [{}], lagged {}, \
                 gaps {}, lost connections {}, failed connects {}",
                m.failures(),
                codes.join(", "),
                m.lagged,
                m.gaps_announced,
                m.disconnects,
                m.connect_failures
            )));
        }
        let senders = self
            .conversations
            .iter()
            .map(|c| c.group.senders.len())
            .sum();
        let mut summary = Summary {
            options: self.options.clone(),
            clients: self.clients.len(),
            conversations: self.conversations.len(),
            senders,
            steps: Vec::new(),
            max_sustainable_rate: None,
            search_finished: None,
            idle: None,
            correct: true,
        };
        if self.options.scenario == Scenario::Idle {
            let (step, idle) = self.idle(rss_before).await;
            summary.idle = idle;
            summary.steps.push(step);
            return Ok(summary);
        }
        if !self.options.find_max {
            let step = self.phase(self.options.rate, self.options.warm_up).await;
            summary.correct = step.check.is_none_or(|c| c.is_correct());
            summary.steps.push(step);
            return Ok(summary);
        }
        let mut search = Search::new(&self.options);
        let mut rate = Some(self.options.rate);
        for number in 0..self.options.max_steps {
            let Some(offered) = rate else { break };
            // The first step warms up fully; later ones briefly, the connections are warm.
            let warm_up = if number == 0 {
                self.options.warm_up
            } else {
                self.options.warm_up.min(1.0)
            };
            let mut step = self.phase(offered, warm_up).await;
            step.attempt = search.attempt;
            // An overloaded step may end its drain with entries still on their way: not
            // delivered in time is a reason the rate is not sustainable, not a loss. Any
            // duplicate or reordering, and any loss in a step that settled, is.
            summary.correct &= step.check.is_none_or(|c| {
                c.is_correct() || (!step.settled && c.duplicated == 0 && c.reordered == 0)
            });
            rate = search.next(step.sustainable, step.latency_only);
            summary.steps.push(step);
        }
        summary.max_sustainable_rate = search.good;
        summary.search_finished = Some(rate.is_none());
        Ok(summary)
    }

    /// Creates the conversations (chatd: rooms created and joined; direct conversations need
    /// nothing; the floor: every member joins its group's room).
    async fn setup(&mut self) -> Result<(), Error> {
        let groups = plan::groups(&self.options);
        let gate = Arc::new(Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, group) in groups.into_iter().enumerate() {
            let clients: Vec<Arc<Shared>> = group
                .members
                .iter()
                .map(|m| Arc::clone(&self.clients[*m as usize]))
                .collect();
            let target = self.options.target;
            let scenario = self.options.scenario;
            let gate = Arc::clone(&gate);
            let name = format!("{}-room-{index}", self.prefix);
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                let id = set_up_group(target, scenario, index, &name, &clients).await?;
                Ok::<_, String>((index, Conversation { id, group }))
            });
        }
        let mut conversations = Vec::new();
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(conversation)) => conversations.push(conversation),
                Ok(Err(e)) => return Err(Error::Setup(e)),
                Err(e) => return Err(Error::Setup(e.to_string())),
            }
        }
        conversations.sort_by_key(|(index, _)| *index);
        self.conversations = conversations.into_iter().map(|(_, c)| c).collect();
        Ok(())
    }

    /// Holds the connections; measures the server's memory per connection.
    async fn idle(&mut self, rss_before: Option<procfs::Usage>) -> (Step, Option<Idle>) {
        // Let the server settle (handshake buffers freed, presence published).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = self.options.server_pid.and_then(procfs::usage);
        let idle = match (rss_before, rss_after) {
            (Some(before), Some(after)) => Some(Idle {
                connections: self.clients.len(),
                rss_before: before.rss_bytes,
                rss_after: after.rss_bytes,
                bytes_per_connection: after.rss_bytes.saturating_sub(before.rss_bytes) as f64
                    / self.clients.len() as f64,
            }),
            _ => None,
        };
        let mut counted = Metrics::default();
        let mut total = Metrics::default();
        let end = Instant::now() + Duration::from_secs_f64(self.options.duration);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
            for worker in &self.workers {
                let m = worker.collect().await;
                counted.merge(&m);
            }
            if !self.options.quiet {
                eprintln!(
                    "{}",
                    progress(self.started.elapsed().as_secs_f64(), "idle", &counted, 1.0)
                );
            }
            total.merge(&counted);
            counted = Metrics::default();
        }
        let mut step = Step::new(0.0, self.options.duration, &total, &total);
        step.handshake = Latency::of(&self.with_initial_handshakes(&total));
        step.sustainable = total.disconnects == 0 && total.connect_failures == 0;
        if !step.sustainable {
            step.limited_by = Some("connections were lost while idle".into());
        }
        (step, idle)
    }

    /// One measured phase at `rate`: warm-up, measurement, drain, check.
    async fn phase(&mut self, rate: f64, warm_up: f64) -> Step {
        let clock = &self.context.clock;
        let start = Instant::now() + Duration::from_millis(50);
        let measure_start = start + Duration::from_secs_f64(warm_up);
        let end = measure_start + Duration::from_secs_f64(self.options.duration);
        clock.set_window(clock.at(measure_start), clock.at(end));
        let mut checker = self.context.check.then(|| {
            let mut checker = Checker::new();
            for conversation in &self.conversations {
                for stream in self.checked_streams(conversation) {
                    for member in &conversation.group.members {
                        checker.member(*member, stream);
                    }
                }
            }
            checker
        });
        // An earlier phase's sends must all be answered first, or they would count here.
        let leftovers_deadline = Instant::now() + Duration::from_secs_f64(self.options.drain);
        while self.outstanding() > 0 && Instant::now() < leftovers_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for worker in &self.workers {
            drop(worker.collect().await);
        }
        self.start_schedulers(rate, start, end);
        let churn = (self.options.scenario == Scenario::Churn).then(|| {
            tokio::spawn(churn(
                self.clients.clone(),
                self.options.churn_rate,
                start,
                end,
            ))
        });

        let mut counted = Metrics::default(); // counters inside the window
        let mut total = Metrics::default(); // histograms and errors, whole phase
        let mut cpu_start = None;
        let mut cpu_end = None;
        let drain_deadline = end + Duration::from_secs_f64(self.options.drain);
        let mut last_tick = Instant::now();
        let mut quiet_ticks = 0;
        let mut window = 0.0;
        let mut marks = vec![measure_start, end];
        let settled = loop {
            let now = Instant::now();
            let next_second = last_tick + Duration::from_secs(1);
            let next = marks
                .iter()
                .copied()
                .filter(|m| *m > now)
                .chain(std::iter::once(next_second))
                .min()
                .unwrap_or(next_second);
            tokio::time::sleep_until(next.into()).await;
            let tick = Instant::now();
            let seconds = tick.duration_since(last_tick).as_secs_f64();
            let previous = std::mem::replace(&mut last_tick, tick);
            let mut interval = Metrics::default();
            for worker in &self.workers {
                let mut m = worker.collect().await;
                if let Some(checker) = checker.as_mut() {
                    for record in m.records.drain(..) {
                        match record {
                            Record::Acked {
                                sender,
                                conversation,
                                seq,
                                chain,
                            } => {
                                checker.acked(conversation, seq);
                                checker.acked_to_sender(sender, conversation, seq);
                                if let Some(appended) = chain {
                                    checker.chained(conversation, seq, &appended);
                                }
                            }
                            Record::Delivered(client, c, s, link) => {
                                checker.delivered(client, c, s);
                                if let Some(prefix) = link {
                                    checker.linked(c, s, prefix);
                                }
                            }
                        }
                    }
                }
                interval.merge(&m);
            }
            // Marks make collections happen at the window's edges, so an interval is either
            // inside the window or outside it.
            if previous >= measure_start && previous < end {
                counted.merge(&interval);
                window += seconds;
            }
            total.merge(&interval);
            if cpu_start.is_none() && tick >= measure_start {
                cpu_start = Some(self.cpu_usage());
            }
            if cpu_end.is_none() && tick >= end {
                cpu_end = Some(self.cpu_usage());
            }
            marks.retain(|m| *m > tick);
            let label = if tick < measure_start {
                "warm-up"
            } else if tick <= end {
                "measure"
            } else {
                "drain"
            };
            if !self.options.quiet {
                eprintln!(
                    "{}",
                    progress(
                        self.started.elapsed().as_secs_f64(),
                        label,
                        &interval,
                        seconds
                    )
                );
            }
            if tick > end {
                let moving = interval.acks + interval.deliveries + interval.replayed > 0;
                quiet_ticks = if moving { 0 } else { quiet_ticks + 1 };
                let settled = self.outstanding() == 0
                    && checker.as_ref().is_none_or(|c| c.report().lost == 0);
                if (settled && quiet_ticks >= 1) || tick >= drain_deadline {
                    break settled;
                }
            }
        };
        if let Some(churn) = churn {
            let _ = churn.await;
        }
        let mut step = Step::new(rate, window, &counted, &total);
        step.handshake = Latency::of(&self.with_initial_handshakes(&total));
        step.unanswered = self.outstanding() as u64;
        step.settled = settled;
        step.check = checker.as_ref().map(Checker::report);
        if let (Some((server_a, own_a)), Some((server_b, own_b))) = (cpu_start, cpu_end)
            && counted.deliveries > 0
        {
            let per_delivery = |a: Option<procfs::Usage>, b: Option<procfs::Usage>| {
                Some(b?.cpu_us.saturating_sub(a?.cpu_us) as f64 / counted.deliveries as f64)
            };
            step.server_cpu_us_per_delivery = per_delivery(server_a, server_b);
            step.loadgen_cpu_us_per_delivery = per_delivery(own_a, own_b);
        }
        self.judge(&mut step, &total);
        step
    }

    /// The streams the checker follows in `conversation`: the conversation itself on chatd
    /// (one sequence); on a peer, each sender's messages (numbered by the sender).
    fn checked_streams(&self, conversation: &Conversation) -> Vec<ConversationId> {
        match conversation.id {
            ConversationId::Room(room) if self.options.target.is_peer() => conversation
                .group
                .senders
                .iter()
                .map(|sender| peer::stream(room, *sender))
                .collect(),
            id => vec![id],
        }
    }

    /// The server's CPU time and memory (with `--server-pid`), and this process's.
    fn cpu_usage(&self) -> (Option<procfs::Usage>, Option<procfs::Usage>) {
        (
            self.options.server_pid.and_then(procfs::usage),
            procfs::usage(std::process::id()),
        )
    }

    /// Sends queued or in flight, all clients together.
    fn outstanding(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.outstanding.load(Ordering::Acquire))
            .sum()
    }

    /// The handshakes of the first connections and those of `metrics` (reconnects).
    fn with_initial_handshakes(&self, metrics: &Metrics) -> hdrhistogram::Histogram<u64> {
        let mut all = self.initial.handshake.clone();
        let _ = all.add(&metrics.handshake);
        all
    }

    /// Decides whether a step's rate was sustained.
    fn judge(&self, step: &mut Step, total: &Metrics) {
        let mut why = Vec::new();
        // One send of slack: at a few messages per second a window holds few of them.
        if step.sends_per_sec * step.seconds + 1.0 < 0.95 * step.offered_rate * step.seconds {
            why.push(format!(
                "sent {:.0}/s of {:.0}/s offered",
                step.sends_per_sec, step.offered_rate
            ));
        }
        if step.acks_per_sec < 0.95 * step.sends_per_sec {
            why.push(format!(
                "acked {:.0}/s of {:.0}/s sent",
                step.acks_per_sec, step.sends_per_sec
            ));
        }
        if step.unanswered > 0 {
            why.push(format!(
                "{} sends unanswered after the drain",
                step.unanswered
            ));
        }
        if total.failures() > 0 {
            why.push(format!("{} errors", total.failures()));
        }
        // Every ack must reach the sender's fellow members; the checker proves it entry by
        // entry on chatd, this counts it on the floor (whose queues may drop).
        let fanout = self.fanout();
        if self.options.scenario != Scenario::Churn
            && step.deliveries_per_sec < 0.95 * step.acks_per_sec * fanout
        {
            why.push(format!(
                "delivered {:.0}/s of {:.0}/s acked times {fanout:.1} recipients",
                step.deliveries_per_sec, step.acks_per_sec
            ));
        }
        if let Some(check) = &step.check
            && !check.is_correct()
        {
            why.push("the check failed".into());
        }
        step.latency_only = false;
        if self.options.find_max && step.send_to_delivery.p99_ms > self.options.max_p99_ms {
            step.latency_only = why.is_empty();
            why.push(format!(
                "p99 delivery {:.3} ms above {} ms",
                step.send_to_delivery.p99_ms, self.options.max_p99_ms
            ));
        }
        step.sustainable = why.is_empty();
        step.limited_by = (!why.is_empty()).then(|| why.join("; "));
    }

    /// Recipients per send, averaged over the senders (each send reaches the other members).
    fn fanout(&self) -> f64 {
        let (recipients, senders) = self.conversations.iter().fold((0, 0), |(r, s), c| {
            let n = c.group.senders.len();
            (r + n * (c.group.members.len() - 1), s + n)
        });
        if senders == 0 {
            0.0
        } else {
            recipients as f64 / senders as f64
        }
    }

    /// One scheduler per client thread, for the senders on that thread; together they send
    /// `rate` messages per second from `start` until `end`.
    fn start_schedulers(&self, rate: f64, start: Instant, end: Instant) {
        let threads = self.workers.len();
        let mut per_thread: Vec<Vec<(Arc<Shared>, ConversationId)>> = vec![Vec::new(); threads];
        for conversation in &self.conversations {
            for sender in &conversation.group.senders {
                let shared = &self.clients[*sender as usize];
                per_thread[*sender as usize % threads].push((Arc::clone(shared), conversation.id));
            }
        }
        let all: usize = per_thread.iter().map(Vec::len).sum();
        for (worker, senders) in self.workers.iter().zip(per_thread) {
            if senders.is_empty() {
                continue;
            }
            let share = rate * senders.len() as f64 / all as f64;
            worker.handle.spawn(schedule(
                Arc::clone(&self.context),
                senders,
                share,
                start,
                end,
            ));
        }
    }
}

/// Sets up one group's conversation; returns its id.
async fn set_up_group(
    target: Target,
    scenario: Scenario,
    index: usize,
    name: &str,
    clients: &[Arc<Shared>],
) -> Result<ConversationId, String> {
    let user = |c: &Shared| UserId(c.user.load(std::sync::atomic::Ordering::Acquire));
    if target != Target::Chatd {
        // The floor and the peers: a room (subject, topic) per group, joined by every member.
        let room = RoomId(index as u64 + 1);
        for client in clients {
            request(client, Request::JoinRoom { room }).await?;
        }
        return Ok(ConversationId::Room(room));
    }
    if scenario == Scenario::Dm {
        return Ok(ConversationId::direct(user(&clients[0]), user(&clients[1])));
    }
    let created = request(
        &clients[0],
        Request::CreateRoom {
            name: name.to_owned(),
            invite_only: false,
        },
    )
    .await
    .map_err(|e| format!("create room {name}: {e}"))?;
    let Response::Room(info) = created else {
        return Err(format!("create room {name}: unexpected answer {created:?}"));
    };
    let mut joins = tokio::task::JoinSet::new();
    for client in &clients[1..] {
        let client = Arc::clone(client);
        joins.spawn(async move { request(&client, Request::JoinRoom { room: info.room }).await });
    }
    while let Some(joined) = joins.join_next().await {
        joined
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("join {name}: {e}"))?;
    }
    Ok(ConversationId::Room(info.room))
}

/// Sends on the schedule: the k-th send at `start + k / rate`, by the senders in turn. A
/// send is scheduled whatever happened to the previous ones (open loop); its op id is its
/// scheduled time, from which latencies are measured.
async fn schedule(
    context: Arc<Context>,
    senders: Vec<(Arc<Shared>, ConversationId)>,
    rate: f64,
    start: Instant,
    end: Instant,
) {
    let mut ticker = match Ticker::new() {
        Ok(ticker) => ticker,
        Err(e) => {
            eprintln!("chat-loadgen: no timer: {e}");
            return;
        }
    };
    let clock = &context.clock;
    let (start_ns, end_ns) = (clock.at(start), clock.at(end));
    let interval = 1e9 / rate;
    // Float to integer saturates; a run never reaches 2^64 ns.
    #[allow(clippy::cast_possible_truncation)]
    let due = |k: u64| start_ns + (k as f64 * interval) as u64;
    let mut k = 0u64;
    while due(k) < end_ns {
        if ticker.wait_until(clock.instant(due(k))).await.is_err() {
            tokio::time::sleep_until(clock.instant(due(k)).into()).await;
        }
        let now = clock.now();
        while due(k) <= now && due(k) < end_ns {
            let (shared, conversation) = &senders[usize::try_from(k).unwrap_or(0) % senders.len()];
            let command = Command::Send {
                conversation: *conversation,
                op: OpId(due(k)),
            };
            // Counted before it can be answered; uncounted if the queue refuses it.
            shared.outstanding.fetch_add(1, Ordering::AcqRel);
            if shared.commands.try_send(command).is_err() {
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                metrics::with(|m| m.dropped += 1);
            }
            k += 1;
        }
    }
}

/// Disconnects `rate` clients per second, chosen at random, from `start` until `end`.
async fn churn(clients: Vec<Arc<Shared>>, rate: f64, start: Instant, end: Instant) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut at = start;
    while at < end {
        tokio::time::sleep_until(at.into()).await;
        // xorshift: a fresh client each time, spread over all of them.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let index = usize::try_from(seed % clients.len() as u64).unwrap_or(0);
        clients[index].churn.notify_one();
        at += interval;
    }
}
