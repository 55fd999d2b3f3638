//! `chat`: the command-line client for chatd, built on chat-sdk.
//!
//! Conversation addresses: `@NAME` is the direct conversation with NAME (your own name: notes
//! to self), `#ROOM` is a room. The token and the device id are kept in the profile directory.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chat_sdk::protocol::{
    ConversationId, Entry, ErrorCode, Event, HistoryFrom, MembershipChange, Message, Order, RoomId,
    Seq, UserId,
};
use chat_sdk::{Client, Error, Options, Trust};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// chat: talk to a chatd daemon from the command line.
#[derive(Parser)]
#[command(version, long_about = None, after_help = ADDRESSES)]
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
    #[command(subcommand)]
    command: Command,
}

const ADDRESSES: &str = "Addresses: @NAME is the direct conversation with NAME (your own name for notes to self); #ROOM is a room.";

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
    },
    /// Print events as they arrive.
    Listen {
        /// Only these conversations (@NAME or #ROOM); all when none.
        targets: Vec<String>,
        /// Exit after this many message events.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Print a page of a conversation's history (oldest first).
    History {
        /// @NAME or #ROOM.
        target: String,
        /// Entries before this sequence number.
        #[arg(long, conflicts_with = "after")]
        before: Option<u64>,
        /// Entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (1-100).
        #[arg(long, default_value_t = 50)]
        limit: u16,
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

#[derive(Subcommand)]
enum RoomCommand {
    /// Create a room (you become its owner).
    Create {
        /// Room name (1-64 of a-z 0-9 _ - .).
        name: String,
        /// Joining needs an invitation.
        #[arg(long)]
        invite_only: bool,
    },
    /// Join a room.
    Join {
        /// Room name.
        name: String,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        name: String,
    },
    /// Invite a user (admins and the owner).
    Invite {
        /// Room name.
        name: String,
        /// User name.
        user: String,
    },
    /// Remove a member (admins and the owner).
    Kick {
        /// Room name.
        name: String,
        /// User name.
        user: String,
    },
    /// Remove a member and bar them (admins and the owner).
    Ban {
        /// Room name.
        name: String,
        /// User name.
        user: String,
    },
    /// List a room's members.
    Members {
        /// Room name.
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
    let app = App { cli, profile };
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
    match runtime.block_on(app.run()) {
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
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(id) = text.trim().parse() {
                return Ok(chat_sdk::protocol::DeviceId(id));
            }
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
        let client = Client::connect(&self.options(Some(saved.token.clone()))?)
            .await
            .map_err(|e| {
                let relogin = matches!(e.code(), Some(c) if (200..300).contains(&c.0));
                Failure {
                    message: if relogin {
                        format!("{e}; run `chat login {}` again", saved.name)
                    } else {
                        e.to_string()
                    },
                    code: e.code(),
                }
            })?;
        Ok((client, saved))
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
            Command::Register { user, password } | Command::Login { user, password } => {
                let register = matches!(self.cli.command, Command::Register { .. });
                let password = match password {
                    Some(p) => p.clone(),
                    None => rpassword::prompt_password(format!("password for {user}: "))
                        .map_err(|e| Failure::from(format!("reading the password: {e}")))?,
                };
                let client = Client::connect(&self.options(None)?).await?;
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
            }
            Command::Send { target, text } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                let ack = client.send_text(conversation, text).await?;
                client.close().await;
                self.print(
                    json!({ "type": "ack", "conversation": target, "seq": ack.seq, "ts": ack.ts, "duplicate": ack.duplicate }),
                    || format!("sent to {target}: seq {}", ack.seq),
                );
            }
            Command::Listen {
                targets,
                count,
                timeout,
            } => {
                let (client, saved) = self.connect().await?;
                let mut only = Vec::new();
                for t in targets {
                    only.push((resolve(&client, &saved, t).await?, t.clone()));
                }
                let listen = self.listen(&client, &only, *count);
                match timeout {
                    Some(secs) => {
                        let _ = tokio::time::timeout(Duration::from_secs(*secs), listen).await;
                    }
                    None => listen.await?,
                }
            }
            Command::History {
                target,
                before,
                after,
                limit,
            } => {
                let (client, saved) = self.connect().await?;
                let conversation = resolve(&client, &saved, target).await?;
                let from = match (before, after) {
                    (Some(b), _) => HistoryFrom::Before(Seq(*b)),
                    (None, Some(a)) => HistoryFrom::After(Seq(*a)),
                    (None, None) => HistoryFrom::Latest,
                };
                let page = client
                    .history(conversation, from, *limit, Order::OldestFirst)
                    .await?;
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
            }
            Command::Room(command) => self.room(command).await?,
        }
        Ok(())
    }

    async fn room(&self, command: &RoomCommand) -> Result<(), Failure> {
        let (client, _) = self.connect().await?;
        let find = |name: &str| {
            let name = name.trim_start_matches('#').to_owned();
            let client = &client;
            async move { client.find_room(&name).await.map(|r| r.room) }
        };
        let (verb, name, user) = match command {
            RoomCommand::Create { name, invite_only } => {
                let info = client
                    .create_room(name.trim_start_matches('#'), *invite_only)
                    .await?;
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
        while let Some(event) = client.next_event().await {
            let conversation = match &event {
                Event::Message(m) => Some(m.conversation),
                Event::Membership(m) => Some(m.conversation),
                _ => None,
            };
            if let Some(c) = conversation {
                if !only.is_empty() && !only.iter().any(|(o, _)| *o == c) {
                    continue;
                }
            }
            let label = match conversation {
                Some(c) => match only.iter().find(|(o, _)| *o == c) {
                    Some((_, given)) => given.clone(),
                    None => address(client, &mut names, c).await,
                },
                None => String::new(),
            };
            match event {
                Event::Message(m) => {
                    self.print_entry(client, &mut names, &label, &Entry::Message(m))
                        .await;
                    messages += 1;
                    if count.is_some_and(|n| messages >= n) {
                        return Ok(());
                    }
                }
                Event::Membership(m) => {
                    self.print_entry(client, &mut names, &label, &Entry::Membership(m))
                        .await
                }
                Event::Lagged => self.print(json!({ "type": "lagged" }), || {
                    "(lagged: some events were skipped; see history)".into()
                }),
                other => self.print(
                    json!({ "type": "event", "event": format!("{other:?}") }),
                    || format!("{other:?}"),
                ),
            }
            let _ = std::io::stdout().flush();
        }
        Err(Failure::from(format!(
            "connection closed{}",
            client
                .goodbye()
                .map(|g| format!(": {}", g.reason))
                .unwrap_or_default()
        )))
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
                let body = String::from_utf8_lossy(&m.body).into_owned();
                self.print(
                    json!({ "type": "message", "conversation": conversation, "seq": m.seq, "sender": sender, "sender_id": m.sender, "body": body, "ts": m.ts, "content_type": m.content_type.0, "reply_to": m.reply_to }),
                    || format!("{conversation} #{} {}: {}", m.seq, sender, display_body(m)),
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

fn display_body(m: &Message) -> String {
    if m.content_type.is_text() {
        String::from_utf8_lossy(&m.body).into_owned()
    } else {
        format!("<{} bytes of type {}>", m.body.len(), m.content_type.0)
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

/// `@NAME` / `#ROOM` to a conversation id.
async fn resolve(client: &Client, saved: &Saved, target: &str) -> Result<ConversationId, Failure> {
    if let Some(name) = target.strip_prefix('#') {
        return Ok(ConversationId::Room(client.find_room(name).await?.room));
    }
    if let Some(name) = target.strip_prefix('@') {
        if name == saved.name {
            return Ok(ConversationId::Notes(saved.user));
        }
        let peer = client.user_id(name).await?;
        return Ok(ConversationId::direct(saved.user, peer));
    }
    Err(Failure::from(format!(
        "{target}: address a user as @NAME or a room as #ROOM"
    )))
}
