//! A bot that answers every direct message with the same text.
//!
//! ```sh
//! chatd token --user echo > /tmp/echo.token            # or register echo with `chat register`
//! CHAT_CA=chatd-data/tls/cert.pem CHAT_TOKEN=$(cat /tmp/echo.token) \
//!     cargo run -p chat-sdk --example echo_bot
//! chat send @echo 'hello?'                               # from another terminal
//! ```

use chat_sdk::protocol::{ConversationId, Event};
use chat_sdk::{Client, Error, Options, Trust};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = std::env::var("CHAT_SERVER").unwrap_or_else(|_| "127.0.0.1:4433".into());
    let ca = std::env::var("CHAT_CA").unwrap_or_else(|_| "chatd-data/tls/cert.pem".into());
    let token = std::env::var("CHAT_TOKEN").map_err(|_| Error::Config("set CHAT_TOKEN".into()))?;
    let mut options = Options::new(server, Trust::CaFile(ca.into()));
    options.token = Some(token);
    let bot = Client::connect(&options).await?;
    let me = bot
        .session()
        .map(|s| s.user)
        .ok_or_else(|| Error::Config("not authenticated".into()))?;
    println!("echo bot running as user {me}");
    while let Some(event) = bot.next_event().await {
        let Event::Message(message) = event else {
            continue;
        };
        // Answer direct messages from others only (never ourselves: no loops).
        if message.sender == me || !matches!(message.conversation, ConversationId::Direct { .. }) {
            continue;
        }
        let reply = bot
            .send(
                message.conversation,
                message.content_type,
                message.body,
                Some(message.seq),
            )
            .await?;
        println!("echoed seq {} as seq {}", message.seq, reply.seq);
    }
    Ok(())
}
