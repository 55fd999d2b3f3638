//! A minimal room chat: joins (or creates) a room, prints what arrives, sends each line typed.
//!
//! ```sh
//! CHAT_CA=chatd-data/tls/cert.pem CHAT_TOKEN=$(chatd token --user alice) \
//!     cargo run -p chat-sdk --example room_chat -- general
//! ```

use chat_sdk::protocol::{ConversationId, ErrorCode, Event};
use chat_sdk::{Client, Error, Options, Trust};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let room_name = std::env::args().nth(1).unwrap_or_else(|| "general".into());
    let server = std::env::var("CHAT_SERVER").unwrap_or_else(|_| "127.0.0.1:4433".into());
    let ca = std::env::var("CHAT_CA").unwrap_or_else(|_| "chatd-data/tls/cert.pem".into());
    let token = std::env::var("CHAT_TOKEN").map_err(|_| Error::Config("set CHAT_TOKEN".into()))?;
    let mut options = Options::new(server, Trust::CaFile(ca.into()));
    options.token = Some(token);
    let client = Client::connect(&options).await?;

    let room = match client.find_room(&room_name).await {
        Ok(info) => info,
        Err(e) if e.code() == Some(ErrorCode::UNKNOWN_ROOM) => {
            client.create_room(&room_name, false).await?
        }
        Err(e) => return Err(e),
    };
    match client.join_room(room.room).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::ALREADY_MEMBER) => {}
        Err(e) => return Err(e),
    }
    let conversation = ConversationId::Room(room.room);
    println!(
        "in #{} — type a line to send it, Ctrl-D to leave",
        room.name
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(text)) if !text.is_empty() => {
                    client.send_text(conversation, &text).await?;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            event = client.next_event() => match event {
                Some(Event::Message(m)) if m.conversation == conversation => {
                    println!("[{}] user {}: {}", m.seq, m.sender, String::from_utf8_lossy(&m.body));
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    client.close().await;
    Ok(())
}
