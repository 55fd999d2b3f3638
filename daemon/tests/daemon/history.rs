//! History paging in both directions never skips or repeats an entry, also while a writer
//! appends.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_never_skip_or_repeat_while_a_writer_appends() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.send_rate = 100_000;
        c.limits.send_burst = 100_000;
    });
    let (mut reader, r) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("reader"), 1).await;
    let (mut writer, w) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("writer"), 1).await;
    let dm = ConversationId::direct(r.user, w.user);
    for op in 1..=20 {
        writer.send_text(dm, op, "early").await;
    }
    let total = 120u64;
    let append = tokio::spawn(async move {
        for op in 21..=total {
            writer.send_text(dm, op, "while paging").await;
        }
        writer
    });

    // Forward, oldest first, in pages of 7 until everything written is read.
    let mut seen = Vec::new();
    let mut after = Seq(0);
    let mut rounds = 0;
    while (seen.len() as u64) < total {
        rounds += 1;
        assert!(rounds < 10_000, "the writer stopped before {total} entries");
        let page = reader.history(dm, HistoryFrom::After(after), 7).await;
        assert!(page.entries.len() <= 7);
        for entry in &page.entries {
            seen.push(entry.seq().0);
        }
        if let Some(last) = page.entries.last() {
            after = last.seq();
        }
        assert!(page.head.0 >= after.0);
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    let _ = append.await.unwrap();

    // Backward, newest first, from the latest down to the first.
    let mut down = Vec::new();
    let mut from = HistoryFrom::Latest;
    loop {
        let query = HistoryQuery {
            conversation: dm,
            from,
            limit: 9,
            order: Order::NewestFirst,
            thread: None,
        };
        let Response::History(page) = reader.ok(Request::History(query)).await else {
            panic!()
        };
        down.extend(page.entries.iter().map(|e| e.seq().0));
        match page.entries.last() {
            Some(last) if page.more => from = HistoryFrom::Before(last.seq()),
            _ => break,
        }
    }
    assert_eq!(down, (1..=total).rev().collect::<Vec<_>>());
}
