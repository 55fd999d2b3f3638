//! `chat`: the command-line client for chatd, built on chat-sdk.
//!
//! Conversation addresses: `@NAME` or `user:NAME` is the direct conversation with NAME (your
//! own name: notes to self), `#ROOM` or `room:ROOM` is a room (`room:` needs no quoting in a
//! shell). The token, the device id and the cursors of `listen` are kept in the profile
//! directory. `listen` and `shell` reconnect by themselves and resume without a gap; every
//! other command gives up after `--timeout` seconds (10 by default).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chat_sdk::protocol::{
    ContentType, ConversationId, Entry, ErrorCode, Event, HistoryFrom, Marker, MembershipChange,
    OpId, Order, PresenceStatus, Reactions, RoomId, SendMessage, Seq, UserId,
};
use chat_sdk::{Client, Error, Options, Reconnect, Status, Trust};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// chat: talk to a chatd daemon from the command line.
#[derive(Parser)]
#[command(name = "chat", version, long_about = None, after_help = ADDRESSES)]
struct Cli {
    /// Daemon address.
    #[arg(
        long,
        global = true,
        env = "CHAT_SERVER",
        default_value = "127.0.0.1:4433"
    )]
    server: String,
    /// PEM file of the CA or of the daemon's certificate (e.g. chatd-data/tls/cert.pem).
    #[arg(long, global = true, env = "CHAT_CA")]
    ca: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (hex) instead.
    #[arg(long, global = true, env = "CHAT_FINGERPRINT", conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Directory for the token and device id (default: ~/.config/chat).
    #[arg(long, global = true, env = "CHAT_PROFILE")]
    profile: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds: a one-shot command gives up after this long (default 10), `listen` and
    /// `shell` stop after it (default: when interrupted).
    #[arg(long, global = true, value_name = "SECS")]
    timeout: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

const ADDRESSES: &str = "Addresses: @NAME or user:NAME is the direct conversation with NAME (your own name for notes to self); #ROOM or room:ROOM is a room (a shell takes # for a comment unless quoted; room: needs no quotes).";

/// How long a one-shot command may take, unless `--timeout` says otherwise.
const ONE_SHOT_TIMEOUT: u64 = 10;

#[derive(Subcommand)]
enum Command {
    /// Create an account and keep its token in the profile.
    Register {
        /// User name (3-32 of a-z 0-9 _ - ., starting with a letter).
        user: String,
        /// Password (else $CHAT_PASSWORD, else a prompt).
        #[arg(long, env = "CHAT_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log in and keep the token in the profile.
    Login {
        /// User name.
        user: String,
        /// Password (else $CHAT_PASSWORD, else a prompt).
        #[arg(long, env = "CHAT_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Show who the profile's token belongs to.
    Whoami,
    /// Send a text message; prints its sequence number.
    Send {
        /// @NAME or #ROOM.
        target: String,
        /// The text.
        text: String,
        /// Answer the entry with this sequence number (the message joins its thread).
        #[arg(long)]
        reply_to: Option<u64>,
        /// Mention this member (by name; repeat for several): the bridge's event lists
        /// them for push notifications.
        #[arg(long = "mention", value_name = "NAME")]
        mentions: Vec<String>,
    },
    /// React to a message (any member, any message that is not deleted), or with --remove
    /// take your reaction back. Prints the reaction's sequence number.
    React {
        /// @NAME or #ROOM.
        target: String,
        /// The message's sequence number.
        seq: u64,
        /// The reaction: one emoji, or a short name (at most 32 bytes, no spaces).
        reaction: String,
        /// Take the reaction back.
        #[arg(long)]
        remove: bool,
    },
    /// Replace the text of one of your messages; prints the edit's sequence number.
    Edit {
        /// @NAME or #ROOM.
        target: String,
        /// The message's sequence number.
        seq: u64,
        /// The new text.
        text: String,
    },
    /// Delete a message (yours, or anyone's in a room you administer); its text and its
    /// edits' text are erased from the daemon. Prints the deletion's sequence number.
    Delete {
        /// @NAME or #ROOM.
        target: String,
        /// The message's sequence number.
        seq: u64,
    },
    /// Print events as they arrive; reconnects by itself without losing any.
    ///
    /// First shows what arrived since the last `listen` with this profile printed (its
    /// cursors are kept in PROFILE/cursors.json, and move only past what was printed).
    Listen {
        /// Only these conversations (@NAME or #ROOM); all when none.
        targets: Vec<String>,
        /// Exit after this many message events.
        #[arg(long)]
        count: Option<u64>,
        /// Only what arrives from now on; the profile's cursors are left as they were.
        #[arg(long)]
        from_now: bool,
        /// What `listen` does by default (kept for scripts written before it was).
        #[arg(long, hide = true, conflicts_with = "from_now")]
        resume: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell): for example
    /// `chat completions bash > /etc/bash_completion.d/chat`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Chat interactively in one conversation: typed lines are sent; messages, receipts,
    /// typing and presence are shown as they arrive. `/quit` or end of input exits.
    Shell {
        /// @NAME or #ROOM.
        target: String,
        /// Entries of history shown first.
        #[arg(long, default_value_t = 20)]
        last: u16,
    },
    /// Print a page of a conversation's history (oldest first).
    History {
        /// @NAME or #ROOM.
        target: String,
        #[command(flatten)]
        page: Page,
    },
    /// Print a page of a thread: the messages that answer ROOT (oldest first).
    Thread {
        /// @NAME or #ROOM.
        target: String,
        /// The sequence number of the entry the thread answers.
        root: u64,
        #[command(flatten)]
        page: Page,
    },
    /// Check a conversation's whole history against its hash chain, and print its head's
    /// link: members who see the same link for the same entry were given the same history.
    Verify {
        /// @NAME or #ROOM.
        target: String,
    },
    /// Set your read marker: you have read TARGET up to SEQ.
    Read {
        /// @NAME or #ROOM.
        target: String,
        /// The last sequence number read.
        seq: u64,
    },
    /// List your conversations.
    Rooms,
    /// Manage rooms.
    #[command(subcommand)]
    Room(RoomCommand),
}

/// Where a page of `history` or `thread` starts, and its size.
#[derive(clap::Args)]
struct Page {
    /// Entries before this sequence number.
    #[arg(long, conflicts_with = "after")]
    before: Option<u64>,
    /// Entries after this sequence number.
    #[arg(long)]
    after: Option<u64>,
    /// At most this many (1-100).
    #[arg(long, default_value_t = 50)]
    limit: u16,
}

#[derive(Subcommand)]
enum RoomCommand {
    /// Create a room (you become its owner).
    Create {
        /// Room name (1-64 of a-z 0-9 _ - .; a leading # or room: is left out).
        name: String,
        /// Joining needs an invitation.
        #[arg(long)]
        invite_only: bool,
    },
    /// Join a room.
    Join {
        /// Room name (NAME, #NAME or room:NAME).
        name: String,
    },
    /// Leave a room.
    Leave {
        /// Room name (NAME, #NAME or room:NAME).
        name: String,
    },
    /// Invite a user (admins and the owner).
    Invite {
        /// Room name (NAME, #NAME or room:NAME).
        name: String,
        /// User name.
        user: String,
    },
    /// Remove a member (admins and the owner).
    Kick {
        /// Room name (NAME, #NAME or room:NAME).
        name: String,
        /// User name.
        user: String,
    },
    /// Remove a member and bar them (admins and the owner).
    Ban {
        /// Room name (NAME, #NAME or room:NAME).
        name: String,
        /// User name.
        user: String,
    },
    /// List a room's members.
    Members {
        /// Room name (NAME, #NAME or room:NAME).
        name: String,
    },
}

/// What the profile keeps between runs.
#[derive(Serialize, Deserialize)]
struct Saved {
    user: UserId,
    name: String,
    token: String,
}

struct App {
    cli: Cli,
    profile: PathBuf,
    /// The password of `register` and `login`, asked for before the clock of `--timeout`
    /// starts.
    password: Option<String>,
    /// Whether a connection was established (what a timeout is reported as).
    reached: std::sync::atomic::AtomicBool,
}

/// A failure to report: the message, and the wire code when the daemon sent one.
struct Failure {
    message: String,
    code: Option<ErrorCode>,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            message: e.to_string(),
            code: e.code(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            code: None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let profile = cli.profile.clone().unwrap_or_else(default_profile);
    let json_mode = cli.json;
    let password = match &cli.command {
        Command::Register { user, password } | Command::Login { user, password } => {
            match password {
                Some(p) => Some(p.clone()),
                None => match rpassword::prompt_password(format!("password for {user}: ")) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("chat: reading the password: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            }
        }
        _ => None,
    };
    let app = App {
        cli,
        profile,
        password,
        reached: std::sync::atomic::AtomicBool::new(false),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app.run_timed()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if json_mode {
                let code = failure.code.map(|c| c.0);
                let name = failure.code.and_then(ErrorCode::name);
                eprintln!(
                    "{}",
                    json!({ "type": "error", "code": code, "name": name, "reason": failure.message })
                );
            } else {
                eprintln!("chat: {}", failure.message);
            }
            ExitCode::FAILURE
        }
    }
}

fn default_profile() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("chat")
}

impl App {
    fn options(&self, token: Option<String>) -> Result<Options, Failure> {
        let trust = match (&self.cli.ca, &self.cli.fingerprint) {
            (Some(ca), _) => Trust::CaFile(ca.clone()),
            (None, Some(f)) => Trust::fingerprint(f)?,
            (None, None) => Trust::SystemRoots,
        };
        let mut options = Options::new(self.cli.server.clone(), trust);
        options.device = self.device()?;
        options.token = token;
        options.client_name = concat!("chat-cli/", env!("CARGO_PKG_VERSION")).into();
        Ok(options)
    }

    fn device(&self) -> Result<chat_sdk::protocol::DeviceId, Failure> {
        let path = self.profile.join("device");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(id) = text.trim().parse()
        {
            return Ok(chat_sdk::protocol::DeviceId(id));
        }
        let id = chat_sdk::random_u64();
        self.write_profile("device", id.to_string().as_bytes())?;
        Ok(chat_sdk::protocol::DeviceId(id))
    }

    fn write_profile(&self, file: &str, contents: &[u8]) -> Result<(), Failure> {
        let fail =
            |e: std::io::Error| Failure::from(format!("profile {}: {e}", self.profile.display()));
        std::fs::create_dir_all(&self.profile).map_err(fail)?;
        let path = self.profile.join(file);
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        f.open(&path)
            .and_then(|mut f| f.write_all(contents))
            .map_err(fail)
    }

    fn saved(&self) -> Result<Saved, Failure> {
        let path = self.profile.join("session.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Failure::from(format!(
                "not logged in (no {}); run `chat login USER`",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| Failure::from(format!("{}: {e}", path.display())))
    }

    async fn connect(&self) -> Result<(Client, Saved), Failure> {
        let saved = self.saved()?;
        let options = self.options(Some(saved.token.clone()))?;
        Ok((self.connect_with(&saved, &options).await?, saved))
    }

    /// Connects for a long session: reconnects by itself, resuming from the cursors (kept in
    /// the profile when `keep_cursors`).
    async fn connect_resilient(&self, keep_cursors: bool) -> Result<(Client, Saved), Failure> {
        let saved = self.saved()?;
        let mut options = self.options(Some(saved.token.clone()))?;
        options.reconnect = Some(Reconnect::default());
        if keep_cursors {
            std::fs::create_dir_all(&self.profile)
                .map_err(|e| Failure::from(format!("profile {}: {e}", self.profile.display())))?;
            options.cursor_file = Some(self.profile.join("cursors.json"));
        }
        Ok((self.connect_with(&saved, &options).await?, saved))
    }

    /// Connects, within `--timeout` (10 s by default): a daemon that does not answer is
    /// "not reachable", named by its address.
    async fn reach(&self, options: &Options) -> Result<Client, Failure> {
        let secs = self.cli.timeout.unwrap_or(ONE_SHOT_TIMEOUT);
        let server = &self.cli.server;
        match tokio::time::timeout(Duration::from_secs(secs), Client::connect(options)).await {
            Ok(Ok(client)) => {
                self.reached
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(client)
            }
            Ok(Err(Error::Connect(e))) => Err(Failure::from(format!(
                "daemon not reachable at {server}: {e}"
            ))),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(self.timed_out(secs)),
        }
    }

    /// What running out of `--timeout` is reported as: before a connection, the daemon is
    /// not reachable; after, it did not answer.
    fn timed_out(&self, secs: u64) -> Failure {
        let server = &self.cli.server;
        Failure::from(if self.reached.load(std::sync::atomic::Ordering::Relaxed) {
            format!("no answer from {server} within {secs} s (--timeout)")
        } else {
            format!("daemon not reachable at {server}: no answer within {secs} s (--timeout)")
        })
    }

    /// Runs the command: a one-shot command within `--timeout` (10 s by default); `listen`
    /// and `shell` keep it for themselves (they stop after it).
    async fn run_timed(&self) -> Result<(), Failure> {
        let long_running = matches!(
            self.cli.command,
            Command::Listen { .. } | Command::Shell { .. } | Command::Completions { .. }
        );
        if long_running {
            return self.run().await;
        }
        let secs = self.cli.timeout.unwrap_or(ONE_SHOT_TIMEOUT);
        match tokio::time::timeout(Duration::from_secs(secs), self.run()).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(secs)),
        }
    }

    async fn connect_with(&self, saved: &Saved, options: &Options) -> Result<Client, Failure> {
        self.reach(options).await.map_err(|mut failure| {
            if failure.code.is_some_and(|c| (200..300).contains(&c.0)) {
                failure.message =
                    format!("{}; run `chat login {}` again", failure.message, saved.name);
            }
            failure
        })
    }

    fn print(&self, value: serde_json::Value, human: impl FnOnce() -> String) {
        if self.cli.json {
            println!("{value}");
        } else {
            println!("{}", human());
        }
    }

    async fn run(&self) -> Result<(), Failure> {
        match &self.cli.command {
            Command::Register { user, .. } | Command::Login { user, .. } => {
                let register = matches!(self.cli.command, Command::Register { .. });
                let password = self.password.clone().unwrap_or_default();
                let client = self.reach(&self.options(None)?).await?;
                let grant = if register {
                    client.register(user, &password).await?
                } else {
                    client.login(user, &password).await?
                };
                client.close().await;
                let saved = Saved {
                    user: grant.user,
                    name: user.clone(),
                    token: grant.token,
                };
                self.write_profile(
                    "session.json",
                    &serde_json::to_vec(&saved).unwrap_or_default(),
                )?;
                let verb = if register { "registered" } else { "logged in" };
                self.print(
                    json!({ "type": verb, "user": grant.user, "name": user }),
                    || format!("{verb} as {user} (id {})", grant.user),
                );
            }
            Command::Whoami => {
                let (client, saved) = self.connect().await?;
                let session = client
                    .session()
                    .ok_or_else(|| Failure::from("not authenticated".to_owned()))?;
                self.print(json!({ "type": "whoami", "user": session.user, "name": session.name, "expires_at": session.expires_at }), || {
                    format!("{} (id {}) on {}", session.name, session.user, self.cli.server)
                });
                let _ = saved;
                client.close().await;
            }
            Command::Send {
                target,
                text,
                reply_to,
                mentions,
            } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                let mut mentioned = Vec::with_capacity(mentions.len());
                for name in mentions {
                    mentioned.push(client.user_id(name.trim_start_matches('@')).await?);
                }
                let ack = client
                    .send_message(SendMessage {
                        conversation,
                        op: OpId(chat_sdk::random_u64()),
                        content_type: ContentType::TEXT,
                        reply_to: reply_to.map(Seq),
                        body: text.as_bytes().to_vec(),
                        mentions: mentioned,
                    })
                    .await?;
                client.close().await;
                self.print(
                    json!({ "type": "ack", "conversation": target, "seq": ack.seq, "ts": ack.ts, "duplicate": ack.duplicate }),
                    || format!("sent to {target}: seq {}", ack.seq),
                );
            }
            Command::Edit { target, seq, text } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                let body = text.as_bytes().to_vec();
                let ack = client
                    .edit(conversation, Seq(*seq), ContentType::TEXT, body)
                    .await?;
                client.close().await;
                self.print(
                    json!({ "type": "ack", "conversation": target, "seq": ack.seq, "ts": ack.ts, "duplicate": ack.duplicate, "edited": seq }),
                    || format!("edited {target} #{seq}: seq {}", ack.seq),
                );
            }
            Command::Delete { target, seq } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                let ack = client.delete(conversation, Seq(*seq)).await?;
                client.close().await;
                self.print(
                    json!({ "type": "ack", "conversation": target, "seq": ack.seq, "ts": ack.ts, "duplicate": ack.duplicate, "deleted": seq }),
                    || format!("deleted {target} #{seq}: seq {}", ack.seq),
                );
            }
            Command::React {
                target,
                seq,
                reaction,
                remove,
            } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                let ack = if *remove {
                    client.unreact(conversation, Seq(*seq), reaction).await?
                } else {
                    client.react(conversation, Seq(*seq), reaction).await?
                };
                client.close().await;
                let verb = if *remove { "took back" } else { "reacted" };
                self.print(
                    json!({ "type": "ack", "conversation": target, "seq": ack.seq, "ts": ack.ts, "duplicate": ack.duplicate, "reacted": seq, "reaction": reaction, "removed": remove }),
                    || format!("{verb} {reaction} on {target} #{seq}: seq {}", ack.seq),
                );
            }
            Command::Listen {
                targets,
                count,
                from_now,
                resume: _,
            } => {
                let (client, saved) = self.connect_resilient(!*from_now).await?;
                let mut only = Vec::new();
                for t in targets {
                    only.push((resolve(&client, &saved, t).await?, t.clone()));
                }
                let listen = self.listen(&client, &only, *count);
                let result = match self.cli.timeout {
                    Some(secs) => tokio::time::timeout(Duration::from_secs(secs), listen)
                        .await
                        .unwrap_or(Ok(())),
                    None => listen.await,
                };
                // Closing writes the cursors.
                client.close().await;
                result?;
            }
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(*shell, &mut command, "chat", &mut std::io::stdout());
            }
            Command::Shell { target, last } => {
                let shell = self.shell(target, *last);
                match self.cli.timeout {
                    Some(secs) => tokio::time::timeout(Duration::from_secs(secs), shell)
                        .await
                        .unwrap_or(Ok(()))?,
                    None => shell.await?,
                }
            }
            Command::History { target, page } => self.page(target, None, page).await?,
            Command::Thread { target, root, page } => {
                self.page(target, Some(Seq(*root)), page).await?;
            }
            Command::Verify { target } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                let verified = client.verify(conversation).await?;
                client.close().await;
                if let Some(broken) = verified.broken {
                    return Err(Failure::from(format!(
                        "{target}: the hash chain breaks at entry {}: {} (the {} entries before it \
                         follow it)",
                        broken.seq.0, broken.error, verified.entries
                    )));
                }
                let link = hex::encode(verified.link);
                self.print(
                    json!({
                        "type": "verified",
                        "conversation": target,
                        "entries": verified.entries,
                        "erased": verified.erased,
                        "head": verified.head.0,
                        "link": link,
                    }),
                    || {
                        format!(
                            "{target}: {} entries follow the hash chain ({} erased); entry {} \
                             has link {link}",
                            verified.entries, verified.erased, verified.head.0
                        )
                    },
                );
            }
            Command::Read { target, seq } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                client
                    .mark(conversation, chat_sdk::protocol::Marker::Read, Seq(*seq))
                    .await?;
                client.close().await;
                self.print(
                    json!({ "type": "read", "conversation": target, "seq": seq }),
                    || format!("read {target} up to {seq}"),
                );
            }
            Command::Rooms => {
                let (client, _) = self.connect().await?;
                let mut after = None;
                loop {
                    let page = client.conversations(after, 100).await?;
                    for c in &page.conversations {
                        let address = match c.conversation {
                            ConversationId::Room(_) => format!("#{}", c.title),
                            _ => format!("@{}", c.title),
                        };
                        self.print(
                            json!({ "type": "conversation", "conversation": address, "head": c.head, "delivered": c.delivered, "read": c.read, "role": c.role.map(|r| format!("{r:?}").to_lowercase()) }),
                            || format!("{address}\t{} entries, {} unread{}", c.head, c.head.0.saturating_sub(c.read.0), c.role.map(|r| format!("\t{r:?}").to_lowercase()).unwrap_or_default()),
                        );
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                client.close().await;
            }
            Command::Room(command) => {
                // Closed either way, so the daemon sees this device leave at once.
                let (client, _) = self.connect().await?;
                let result = self.room(&client, command).await;
                client.close().await;
                result?;
            }
        }
        Ok(())
    }

    async fn room(&self, client: &Client, command: &RoomCommand) -> Result<(), Failure> {
        let find = |name: &str| {
            let name = room_name(name).to_owned();
            async move { client.find_room(&name).await.map(|r| r.room) }
        };
        let (verb, name, user) = match command {
            RoomCommand::Create { name, invite_only } => {
                let info = client.create_room(room_name(name), *invite_only).await?;
                self.print(json!({ "type": "room", "room": info.room, "name": info.name, "invite_only": info.invite_only }), || {
                    format!("created #{} (id {})", info.name, info.room)
                });
                return Ok(());
            }
            RoomCommand::Join { name } => {
                let info = client.join_room(find(name).await?).await?;
                self.print(json!({ "type": "room", "room": info.room, "name": info.name, "members": info.members }), || {
                    format!("joined #{} ({} members)", info.name, info.members)
                });
                return Ok(());
            }
            RoomCommand::Leave { name } => {
                client.leave_room(find(name).await?).await?;
                ("left", name, None)
            }
            RoomCommand::Members { name } => {
                let room: RoomId = find(name).await?;
                let mut after = None;
                loop {
                    let page = client.members(room, after, 100).await?;
                    for m in &page.members {
                        let role = format!("{:?}", m.role).to_lowercase();
                        self.print(json!({ "type": "member", "user": m.user, "name": m.name, "role": role }), || format!("{}\t{role}", m.name));
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => return Ok(()),
                    }
                }
            }
            RoomCommand::Invite { name, user } => ("invited", name, Some(user)),
            RoomCommand::Kick { name, user } => ("kicked", name, Some(user)),
            RoomCommand::Ban { name, user } => ("banned", name, Some(user)),
        };
        if let Some(user) = user {
            let room = find(name).await?;
            let id = client.user_id(user.trim_start_matches('@')).await?;
            match command {
                RoomCommand::Invite { .. } => client.invite(room, id).await?,
                RoomCommand::Kick { .. } => client.kick(room, id).await?,
                _ => client.ban(room, id).await?,
            }
        }
        self.print(
            json!({ "type": verb, "room": name, "user": user }),
            || match user {
                Some(u) => format!("{verb} {u} in {name}"),
                None => format!("{verb} {name}"),
            },
        );
        Ok(())
    }

    async fn listen(
        &self,
        client: &Client,
        only: &[(ConversationId, String)],
        count: Option<u64>,
    ) -> Result<(), Failure> {
        let mut names = Names::default();
        // Scripts wait for this line before they produce what they expect to see.
        if self.cli.json {
            println!("{}", json!({ "type": "listening" }));
        } else {
            eprintln!("listening (Ctrl-C to stop)");
        }
        let _ = std::io::stdout().flush();
        let mut messages = 0;
        if count == Some(0) {
            return Ok(());
        }
        let mut status = client.status_changes();
        let mut breaks = 0;
        loop {
            let event = tokio::select! {
                event = client.next_event_unmarked() => match event {
                    Some(event) => event,
                    None => break,
                },
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = *status.borrow_and_update();
                    self.print_status(now);
                    continue;
                }
            };
            let conversation = match &event {
                Event::Receipt(r) => Some(r.conversation),
                Event::Typing(t) => Some(t.conversation),
                Event::Gap(g) => Some(g.conversation),
                other => other.entry_position().map(|(c, _)| c),
            };
            if let Some(c) = conversation
                && !only.is_empty()
                && !only.iter().any(|(o, _)| *o == c)
            {
                continue;
            }
            let label = match conversation {
                Some(c) => match only.iter().find(|(o, _)| *o == c) {
                    Some((_, given)) => given.clone(),
                    None => address(client, &mut names, c).await,
                },
                None => String::new(),
            };
            let is_message = matches!(event, Event::Message(_));
            let handled = chat_sdk::position(&event);
            self.warn_of_breaks(client, &mut breaks);
            self.print_event(client, &mut names, &label, event).await;
            let _ = std::io::stdout().flush();
            // Only what was printed moves the saved cursors (`listen --resume`).
            if let Some((conversation, seq)) = handled {
                client.mark_handled(conversation, seq);
            }
            if is_message {
                messages += 1;
                if count.is_some_and(|n| messages >= n) {
                    return Ok(());
                }
            }
        }
        Err(Failure::from(format!(
            "connection closed{}",
            client
                .goodbye()
                .map(|g| format!(": {}", g.reason))
                .unwrap_or_default()
        )))
    }

    /// Says so when a conversation's hash chain broke since `seen` breaks (stderr, or a JSON
    /// line): the daemon gave this client entries that do not follow the ones before.
    fn warn_of_breaks(&self, client: &Client, seen: &mut u64) {
        let report = client.chain_report();
        let new = usize::try_from(*seen).unwrap_or(usize::MAX);
        for broken in report.broken.iter().skip(new) {
            let (c, seq) = (broken.conversation, broken.seq.0);
            if self.cli.json {
                let error = broken.error.to_string();
                let line = json!({ "type": "chain_broken", "conversation": c.to_string(), "seq": seq, "error": error });
                println!("{line}");
            } else {
                eprintln!(
                    "(warning: the hash chain of {c} breaks at entry {seq}: {}; its entries from \
                     there are not checked)",
                    broken.error
                );
            }
        }
        *seen = report.breaks;
    }

    /// Says that the connection was lost or is back (stderr, or a JSON line).
    fn print_status(&self, status: Status) {
        let (kind, text) = match status {
            Status::Connected => ("reconnected", "(reconnected; resuming)".to_owned()),
            Status::Reconnecting { attempt } => (
                "reconnecting",
                format!("(connection lost; reconnecting, attempt {attempt})"),
            ),
            Status::Closed => ("closed", "(connection closed)".to_owned()),
        };
        if self.cli.json {
            println!("{}", json!({ "type": kind }));
        } else {
            eprintln!("{text}");
        }
    }

    /// Prints one event, labelled with its conversation's address.
    async fn print_event(&self, client: &Client, names: &mut Names, label: &str, event: Event) {
        match event {
            Event::Message(m) => {
                self.print_entry(client, names, label, &Entry::Message(m))
                    .await;
            }
            Event::Membership(m) => {
                self.print_entry(client, names, label, &Entry::Membership(m))
                    .await;
            }
            Event::Edit(e) => {
                self.print_entry(client, names, label, &Entry::Edit(e)).await;
            }
            Event::Deletion(d) => {
                self.print_entry(client, names, label, &Entry::Deletion(d))
                    .await;
            }
            Event::Erased(e) => {
                self.print_entry(client, names, label, &Entry::Erased(e))
                    .await;
            }
            Event::Reaction(r) => {
                self.print_entry(client, names, label, &Entry::Reaction(r))
                    .await;
            }
            Event::Receipt(r) => {
                let user = names.name(client, r.user).await;
                let marker = match r.marker {
                    Marker::Delivered => "delivered",
                    Marker::Read => "read",
                };
                self.print(
                    json!({ "type": "receipt", "conversation": label, "user": user, "marker": marker, "seq": r.seq }),
                    || format!("{label} ({user} {marker} up to #{})", r.seq),
                );
            }
            Event::Typing(t) => {
                let user = names.name(client, t.user).await;
                self.print(
                    json!({ "type": "typing", "conversation": label, "user": user, "active": t.active, "expires_in_ms": t.expires_in_ms }),
                    || {
                        if t.active {
                            format!("{label} ({user} is typing…)")
                        } else {
                            format!("{label} ({user} stopped typing)")
                        }
                    },
                );
            }
            Event::Presence(p) => {
                let user = names.name(client, p.user).await;
                let online = p.status == PresenceStatus::Online;
                self.print(
                    json!({ "type": "presence", "user": user, "online": online, "last_seen": p.last_seen }),
                    || {
                        if online {
                            format!("({user} is online)")
                        } else {
                            format!("({user} is offline)")
                        }
                    },
                );
            }
            Event::CaughtUp { replayed } => self.print(
                json!({ "type": "caught_up", "replayed": replayed }),
                || format!("(caught up: {replayed} missed entries replayed)"),
            ),
            Event::Gap(g) => self.print(
                json!({ "type": "gap", "conversation": label, "from": g.from, "to": g.to }),
                || {
                    format!(
                        "{label} (entries #{} to #{} were not replayed; see `chat history {label} --after {}`)",
                        g.from,
                        g.to,
                        g.from.0.saturating_sub(1)
                    )
                },
            ),
            Event::Lagged => self.print(json!({ "type": "lagged" }), || {
                "(lagged: some events were skipped; see history)".into()
            }),
        }
    }

    /// `chat history` and `chat thread`: one page, oldest first.
    async fn page(&self, target: &str, thread: Option<Seq>, page: &Page) -> Result<(), Failure> {
        let (client, saved) = self.connect().await?;
        let conversation = resolve(&client, &saved, target).await?;
        let limit = page.limit;
        let from = match (page.before, page.after) {
            (Some(b), _) => HistoryFrom::Before(Seq(b)),
            (None, Some(a)) => HistoryFrom::After(Seq(a)),
            (None, None) => HistoryFrom::Latest,
        };
        let order = Order::OldestFirst;
        let page = match thread {
            Some(root) => {
                client
                    .thread(conversation, root, from, limit, order)
                    .await?
            }
            None => client.history(conversation, from, limit, order).await?,
        };
        let mut names = Names::default();
        for entry in &page.entries {
            self.print_entry(&client, &mut names, target, entry).await;
        }
        if !self.cli.json && page.more {
            println!(
                "(more: use --before {} or --after {})",
                page.entries.first().map_or(0, |e| e.seq().0),
                page.entries.last().map_or(0, |e| e.seq().0)
            );
        }
        client.close().await;
        Ok(())
    }

    /// `chat shell TARGET`.
    async fn shell(&self, target: &str, last: u16) -> Result<(), Failure> {
        use tokio::io::AsyncBufReadExt as _;
        let (client, saved) = self.connect_resilient(false).await?;
        let conversation = resolve(&client, &saved, target).await?;
        let mut names = Names::default();
        if last > 0 {
            let page = client
                .history(conversation, HistoryFrom::Latest, last, Order::OldestFirst)
                .await?;
            for entry in &page.entries {
                self.print_entry(&client, &mut names, target, entry).await;
            }
            if page.head > Seq(0) {
                client.mark(conversation, Marker::Read, page.head).await?;
            }
        }
        // In a direct conversation, show whether the other side is there.
        let peer = match conversation {
            ConversationId::Direct { low, high } => {
                Some(if low == saved.user { high } else { low })
            }
            _ => None,
        };
        if let Some(peer) = peer {
            for state in client.presence(vec![peer], Vec::new()).await? {
                self.print_event(&client, &mut names, target, Event::Presence(state))
                    .await;
            }
        }
        if !self.cli.json {
            eprintln!("chatting in {target}: type a line to send it, /quit to leave");
        }
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut status = client.status_changes();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let line = match line {
                        Ok(Some(line)) => line,
                        Ok(None) => break,
                        Err(e) => return Err(Failure::from(format!("reading input: {e}"))),
                    };
                    let text = line.trim();
                    if text == "/quit" {
                        break;
                    }
                    if text.is_empty() {
                        continue;
                    }
                    // A failed send is reported and the shell goes on.
                    match client.send_text(conversation, text).await {
                        Ok(ack) if self.cli.json => println!("{}", json!({ "type": "ack", "conversation": target, "seq": ack.seq, "ts": ack.ts })),
                        Ok(_) => {}
                        Err(e) => self.print(
                            json!({ "type": "error", "code": e.code().map(|c| c.0), "reason": e.to_string() }),
                            || format!("(not sent: {e})"),
                        ),
                    }
                }
                event = client.next_event_unmarked() => {
                    let Some(event) = event else { break };
                    let relevant = match &event {
                        Event::Message(m) => m.conversation == conversation,
                        Event::Membership(m) => m.conversation == conversation,
                        Event::Edit(e) => e.conversation == conversation,
                        Event::Deletion(d) => d.conversation == conversation,
                        Event::Erased(e) => e.conversation == conversation,
                        Event::Reaction(r) => r.conversation == conversation,
                        Event::Receipt(r) => r.conversation == conversation && r.user != saved.user,
                        Event::Typing(t) => t.conversation == conversation,
                        Event::Gap(g) => g.conversation == conversation,
                        Event::Presence(p) => Some(p.user) == peer,
                        Event::CaughtUp { .. } => false,
                        Event::Lagged => true,
                    };
                    if !relevant {
                        continue;
                    }
                    // What others write here is read as soon as it is shown.
                    let read = match &event {
                        Event::Message(m) if m.sender != saved.user => Some(m.seq),
                        _ => None,
                    };
                    let handled = chat_sdk::position(&event);
                    self.print_event(&client, &mut names, target, event).await;
                    if let Some((conversation, seq)) = handled {
                        client.mark_handled(conversation, seq);
                    }
                    if let Some(seq) = read {
                        let _ = client.mark(conversation, Marker::Read, seq).await;
                    }
                }
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = *status.borrow_and_update();
                    self.print_status(now);
                    if now == Status::Closed {
                        break;
                    }
                }
            }
            let _ = std::io::stdout().flush();
        }
        client.close().await;
        Ok(())
    }

    async fn print_entry(
        &self,
        client: &Client,
        names: &mut Names,
        conversation: &str,
        entry: &Entry,
    ) {
        match entry {
            Entry::Message(m) => {
                let sender = names.name(client, m.sender).await;
                let (content_type, body) = m.current();
                let text = String::from_utf8_lossy(body).into_owned();
                let edited = m.edited.as_ref().map(|e| e.versions.clone());
                let deleted = m.deleted.map(|d| d.seq);
                let mut mark = match (&m.edited, &m.deleted) {
                    (_, Some(d)) => format!(" (deleted at #{})", d.seq),
                    (Some(_), None) => " (edited)".to_owned(),
                    (None, None) => String::new(),
                };
                if let Some(root) = m.reply_to {
                    mark = format!(" (reply to #{}){mark}", root.0);
                }
                let mut mentions = Vec::with_capacity(m.mentions.len());
                for user in &m.mentions {
                    mentions.push(names.name(client, *user).await);
                }
                if !mentions.is_empty() {
                    mark.push_str(&format!(" (mentions {})", mentions.join(", ")));
                }
                if !m.reactions.is_empty() {
                    mark.push_str(&format!(" [{}]", reaction_counts(&m.reactions)));
                }
                let reactions: Vec<_> = m
                    .reactions
                    .iter()
                    .map(|r| json!({ "reaction": r.reaction, "users": r.users }))
                    .collect();
                self.print(
                    json!({ "type": "message", "conversation": conversation, "seq": m.seq, "sender": sender, "sender_id": m.sender, "body": text, "ts": m.ts, "content_type": content_type.0, "reply_to": m.reply_to, "edits": edited, "deleted": deleted, "mentions": mentions, "mention_ids": m.mentions, "reactions": reactions }),
                    || {
                        let shown = display_body(content_type, body);
                        format!("{conversation} #{} {}: {shown}{mark}", m.seq, sender)
                    },
                );
            }
            Entry::Edit(e) => {
                let sender = names.name(client, e.sender).await;
                let text = String::from_utf8_lossy(&e.body).into_owned();
                self.print(
                    json!({ "type": "edit", "conversation": conversation, "seq": e.seq, "target": e.target, "sender": sender, "sender_id": e.sender, "body": text, "ts": e.ts, "content_type": e.content_type.0 }),
                    || {
                        let shown = display_body(e.content_type, &e.body);
                        format!("{conversation} #{} {sender} edited #{}: {shown}", e.seq, e.target)
                    },
                );
            }
            Entry::Deletion(d) => {
                let actor = names.name(client, d.actor).await;
                self.print(
                    json!({ "type": "deletion", "conversation": conversation, "seq": d.seq, "target": d.target, "actor": actor, "erased": d.erased, "ts": d.ts }),
                    || format!("{conversation} #{} * {actor} deleted #{}", d.seq, d.target),
                );
            }
            Entry::Reaction(r) => {
                let sender = names.name(client, r.sender).await;
                let verb = if r.removed { "took back" } else { "reacted" };
                self.print(
                    json!({ "type": "reaction", "conversation": conversation, "seq": r.seq, "target": r.target, "sender": sender, "sender_id": r.sender, "reaction": r.reaction, "removed": r.removed, "ts": r.ts }),
                    || format!("{conversation} #{} * {sender} {verb} {} on #{}", r.seq, r.reaction, r.target),
                );
            }
            Entry::Erased(e) => {
                self.print(
                    json!({ "type": "erased", "conversation": conversation, "seq": e.seq, "target": e.target, "deletion": e.deletion }),
                    || format!("{conversation} #{} * an edit of #{}, erased", e.seq, e.target),
                );
            }
            Entry::Membership(m) => {
                let actor = names.name(client, m.actor).await;
                let subject = names.name(client, m.subject).await;
                let what = match &m.change {
                    MembershipChange::Created { name, .. } => format!("{actor} created #{name}"),
                    MembershipChange::Joined => format!("{subject} joined"),
                    MembershipChange::Left => format!("{subject} left"),
                    MembershipChange::Invited => format!("{actor} invited {subject}"),
                    MembershipChange::Kicked => format!("{actor} removed {subject}"),
                    MembershipChange::Banned => format!("{actor} banned {subject}"),
                    MembershipChange::Unbanned => format!("{actor} unbanned {subject}"),
                    MembershipChange::RoleChanged(role) => {
                        format!("{actor} made {subject} {role:?}").to_lowercase()
                    }
                };
                self.print(
                    json!({ "type": "membership", "conversation": conversation, "seq": m.seq, "actor": actor, "subject": subject, "change": what, "ts": m.ts }),
                    || format!("{conversation} #{} * {what}", m.seq),
                );
            }
        }
    }
}

/// `👍 2 🎉 1`: each reaction with how many reacted with it.
fn reaction_counts(reactions: &[Reactions]) -> String {
    let counts = reactions
        .iter()
        .map(|r| format!("{} {}", r.reaction, r.users.len()));
    counts.collect::<Vec<_>>().join(" ")
}

fn display_body(content_type: ContentType, body: &[u8]) -> String {
    if content_type.is_text() {
        String::from_utf8_lossy(body).into_owned()
    } else {
        format!("<{} bytes of type {}>", body.len(), content_type.0)
    }
}

/// User names by id, looked up once.
#[derive(Default)]
struct Names(std::collections::HashMap<UserId, String>);

impl Names {
    async fn name(&mut self, client: &Client, user: UserId) -> String {
        if let Some(name) = self.0.get(&user) {
            return name.clone();
        }
        if user == UserId(0) {
            // No account: an operator's deletion (docs/PROTOCOL.md 8.10).
            return "an operator".to_owned();
        }
        let name = client
            .lookup_users(vec![chat_sdk::protocol::UserRef::Id(user)])
            .await
            .ok()
            .and_then(|users| users.into_iter().next())
            .map_or_else(|| format!("user{user}"), |u| u.name);
        self.0.insert(user, name.clone());
        name
    }
}

/// `@peer` or `#room` for a conversation.
async fn address(client: &Client, names: &mut Names, c: ConversationId) -> String {
    let me = client.session().map(|s| s.user).unwrap_or_default();
    match c {
        ConversationId::Room(room) => match client.conversations(None, 100).await {
            Ok(page) => page
                .conversations
                .into_iter()
                .find(|s| s.conversation == c)
                .map_or_else(|| format!("#{room}"), |s| format!("#{}", s.title)),
            Err(_) => format!("#{room}"),
        },
        ConversationId::Direct { low, high } => format!(
            "@{}",
            names.name(client, if low == me { high } else { low }).await
        ),
        ConversationId::Notes(user) => format!("@{}", names.name(client, user).await),
    }
}

/// A room's name given as NAME, #NAME or room:NAME (as conversations are addressed).
fn room_name(given: &str) -> &str {
    given
        .strip_prefix("room:")
        .unwrap_or_else(|| given.trim_start_matches('#'))
}

/// `@NAME` / `#ROOM` to a conversation id.
async fn resolve(client: &Client, saved: &Saved, target: &str) -> Result<ConversationId, Failure> {
    if let Some(name) = target
        .strip_prefix('#')
        .or_else(|| target.strip_prefix("room:"))
    {
        return Ok(ConversationId::Room(client.find_room(name).await?.room));
    }
    if let Some(name) = target
        .strip_prefix('@')
        .or_else(|| target.strip_prefix("user:"))
    {
        if name == saved.name {
            return Ok(ConversationId::Notes(saved.user));
        }
        let peer = client.user_id(name).await?;
        return Ok(ConversationId::direct(saved.user, peer));
    }
    Err(Failure::from(format!(
        "{target}: address a user as @NAME (or user:NAME) and a room as #ROOM (or room:ROOM)"
    )))
}
