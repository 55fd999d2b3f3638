//! `chatd restore` and `chatd verify`: the commands that open the data directory themselves
//! instead of asking a running daemon (restore needs none running; verify opens the store
//! read-only beside one).

use std::process::ExitCode;

use chatd::config::Overrides;

use super::{ConfigArgs, EXIT_DATA, EXIT_UNAVAILABLE, data_dir, load};

/// `chatd restore DIR`: offline, into the configured (or `--data-dir`) data directory.
pub(super) fn restore(args: &ConfigArgs, dir: &std::path::Path) -> ExitCode {
    let config = match load(args, Overrides::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let data_dir = data_dir(&config);
    let parted = config.cluster.partitions_in(&data_dir);
    let layout = match config.cluster.partitions {
        0 => chatd::backup::Layout::Single,
        count => chatd::backup::Layout::Partitions {
            dir: &parted,
            count,
        },
    };
    match chatd::backup::restore(dir, &data_dir, layout) {
        Ok(manifest) if manifest.partition_count > 0 => {
            let numbers: Vec<String> = (manifest.partitions.iter())
                .map(|p| p.partition.to_string())
                .collect();
            println!(
                "restored {} into {}: partitions {} of {} into {}, store format {} (taken by \
                 chatd {} at {} ms since the epoch)",
                dir.display(),
                data_dir.display(),
                numbers.join(" "),
                manifest.partition_count,
                parted.display(),
                manifest.format,
                manifest.chatd,
                manifest.taken_at_ms
            );
            ExitCode::SUCCESS
        }
        Ok(manifest) => {
            println!(
                "restored {} into {}: store format {}, outbox head {}, bridge cursor {} (taken \
                 by chatd {} at {} ms since the epoch)",
                dir.display(),
                data_dir.display(),
                manifest.format,
                manifest.outbox_head,
                manifest.bridge_cursor,
                manifest.chatd,
                manifest.taken_at_ms
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatd: restore: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `chatd verify`.
pub(super) fn verify(args: &ConfigArgs) -> ExitCode {
    let config = match load(args, Overrides::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let data_dir = data_dir(&config);
    // A single node's one store, or every partition's.
    let dbs: Vec<_> = match config.cluster.partitions {
        0 => vec![data_dir.join("db")],
        n => (0..n)
            .map(|p| {
                chatd::store::layout::partition_dir(&config.cluster.partitions_in(&data_dir), p)
            })
            .collect(),
    };
    let mut db = dbs[0].clone();
    let mut checked = Ok(Ok(chatd::store::ChainReport::default()));
    for dir in &dbs {
        db.clone_from(dir);
        let one =
            chatd::store::Store::open_read_only(dir).and_then(|store| match store.format()? {
                Some(format) if format < chatd::store::FORMAT => Ok(Err(format)),
                _ => store.verify_chains(None).map(Ok),
            });
        checked = match (checked, one) {
            (Ok(Ok(mut all)), Ok(Ok(report))) => {
                all.add(report);
                Ok(Ok(all))
            }
            (_, other) => other,
        };
        if !matches!(checked, Ok(Ok(_))) {
            break;
        }
    }
    match checked {
        Ok(Ok(report)) => {
            let plural = |n: u64, one: &'static str, many: &'static str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            println!(
                "{}, {} checked ({} erased, checked by their kept digests)",
                plural(report.conversations, "conversation", "conversations"),
                plural(report.entries, "entry", "entries"),
                report.erased
            );
            if report.broken.is_empty() {
                println!("every chain holds");
                return ExitCode::SUCCESS;
            }
            for (conversation, seq, what) in &report.broken {
                println!("broken: {conversation} entry {}: {what}", seq.0);
            }
            ExitCode::from(EXIT_DATA)
        }
        Ok(Err(format)) => {
            eprintln!(
                "chatd: verify: the store has format {format}; start this chatd once to upgrade \
                 it to {} (which chains it)",
                chatd::store::FORMAT
            );
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("chatd: verify: {}: {e}", db.display());
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
