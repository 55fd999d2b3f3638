//! RocksDB's write-ahead log, as chatd sets it up: recycled files and a bound on its size.
//!
//! Every group commit appends to the WAL and (under `fsync` durability) fdatasyncs it. A WAL
//! that grows with every append makes each fdatasync write the file's inode too (its size
//! changed): a second I/O per group (on ext4, the inode block or a journal commit; measured in
//! bench/RESULTS.md, "The WAL written over recycled files"). With recycling, RocksDB
//! keeps the WAL files it no longer needs (after their memtables were flushed) and writes the
//! next WALs over them: the blocks are allocated and written already, the size does not change,
//! and fdatasync sends only the data. Preallocation would not do it: `fallocate` gives the
//! file unwritten extents, and the first write to each still updates the inode.
//!
//! Recycled files carry RocksDB's recyclable record format (each record names its log
//! number), so after a crash recovery stops where the new records end and ignores the old
//! incarnation's tail. RocksDB supports this with its default point-in-time recovery since
//! 9.1 (facebook/rocksdb#12403); the test below crashes a process writing into a recycled WAL
//! and checks what recovery finds. A WAL only becomes recyclable once its memtables are
//! flushed, it is reused at the next WAL switch, and only WALs of the running process are
//! reused: after each start a daemon writes two growing WALs (until its second flush) before
//! it writes over recycled ones.
//!
//! The WAL's total size is bounded too: without it, a column family written rarely (users,
//! rooms) would keep every WAL since its last flush alive, up to gigabytes replayed at the
//! next start. Past the bound, RocksDB flushes the column families that hold the oldest WAL.

use rocksdb::Options;

/// How the WAL is kept: `[storage]` `recycled_wals` and `max_wal_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// WAL files kept for reuse once obsolete (0: none, every WAL is a new file).
    pub recycled: usize,
    /// The live WALs' total size past which the oldest one's column families are flushed.
    pub max_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            recycled: 2,
            max_bytes: 512 << 20,
        }
    }
}

impl WalOptions {
    /// Sets these on RocksDB's options.
    pub(super) fn apply(self, options: &mut Options) {
        options.set_recycle_log_file_num(self.recycled);
        options.set_max_total_wal_size(self.max_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Cf, Store};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The environment variable that makes the test below act as the crashing writer.
    const CHILD: &str = "CHATD_TEST_RECYCLED_WAL_CHILD";
    const KEYS: u64 = 4_000;
    /// Keys the crashing writer deletes after the flush; the rest it overwrites.
    const DELETED: u64 = 100;
    /// What the writer puts before the flush fills a WAL to more than this; what it writes
    /// after, into the recycled file, stays under it.
    const OLD_TAIL: u64 = 200 * KEYS / 2;

    fn key(i: u64) -> [u8; 8] {
        i.to_be_bytes()
    }

    /// The WAL files in `dir`, by number, with their sizes (RocksDB may rename or delete one
    /// meanwhile: those are left out).
    fn wals(dir: &Path) -> Vec<(u64, u64)> {
        let mut found: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let number = name.strip_suffix(".log")?.parse().ok()?;
                Some((number, e.metadata().ok()?.len()))
            })
            .collect();
        found.sort_unstable();
        found
    }

    /// Flushes every column family (the WAL switches to a new file; the old one becomes
    /// obsolete and, with recycling, is kept for the next switch).
    fn flush_all(store: &Store) {
        for cf in Cf::ALL {
            store.db.flush_cf(store.cf(cf).unwrap()).unwrap();
        }
    }

    /// The crashing writer: fills a WAL, flushes it away, switches until the live WAL is a
    /// recycled file (larger than anything written to it), then overwrites and deletes
    /// every key with synced writes, each one reported on stdout once it returned, then its
    /// last sequence number, and aborts (no close: RocksDB cannot trim the recycled file's
    /// old tail).
    fn crash_writer(dir: &Path) -> ! {
        let store = Store::open(dir).unwrap();
        let cf = store.cf(Cf::Meta).unwrap();
        let mut synced = rocksdb::WriteOptions::default();
        synced.set_sync(true);
        for i in 0..KEYS {
            store
                .db
                .put_cf_opt(cf, key(i), [1u8; 200], &synced)
                .unwrap();
        }
        flush_all(&store);
        let mut recycled = false;
        for switch in 0..50u64 {
            store
                .db
                .put_cf(cf, b"switch", switch.to_be_bytes())
                .unwrap();
            flush_all(&store);
            let live = wals(dir).last().copied();
            if live.is_some_and(|(_, size)| size > OLD_TAIL) {
                recycled = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        println!("recycled {recycled}");
        for i in 0..KEYS {
            if i < DELETED {
                store.db.delete_cf_opt(cf, key(i), &synced).unwrap();
            } else {
                store.db.put_cf_opt(cf, key(i), [2u8; 20], &synced).unwrap();
            }
            println!("acked {i}");
        }
        println!("seq {}", store.db.latest_sequence_number());
        std::process::abort();
    }

    #[test]
    fn a_crash_while_writing_over_a_recycled_wal_loses_no_synced_write_and_revives_no_old_one() {
        if let Some(dir) = std::env::var_os(CHILD) {
            crash_writer(Path::new(&dir));
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().join("db");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::wal::tests::a_crash_while_writing_over_a_recycled_wal_loses_no_synced_write_and_revives_no_old_one",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stdout = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            !out.status.success(),
            "the writer was meant to abort: {stdout}"
        );
        assert!(
            stdout.contains("recycled true"),
            "the writer never got a recycled WAL: {stdout}"
        );
        let acked = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("acked "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .expect("the writer acknowledged nothing");
        assert_eq!(acked, KEYS - 1, "the writer stopped early: {stdout}");
        // The live WAL is still the recycled file, with the old incarnation's tail.
        let (_, size) = *wals(&dir).last().unwrap();
        assert!(size > OLD_TAIL, "the WAL's old tail is gone: {size} bytes");
        let seq: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("seq "))
            .and_then(|n| n.trim().parse().ok())
            .expect("the writer's last sequence number");

        let store = Store::open(&dir).unwrap();
        assert_eq!(
            store.db.latest_sequence_number(),
            seq,
            "recovery stopped early"
        );
        for i in 0..KEYS {
            let found = store.get(Cf::Meta, &key(i)).unwrap();
            if i < DELETED {
                assert_eq!(found, None, "key {i}: deleted, then revived");
            } else {
                assert_eq!(found.as_deref(), Some(&[2u8; 20][..]), "key {i}");
            }
        }
    }

    #[test]
    fn the_options_reach_rocksdb() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = WalOptions {
            recycled: 3,
            max_bytes: 100 << 20,
        };
        let store = Store::open_with(&tmp.path().join("db"), wal).unwrap();
        drop(store);
        let options = std::fs::read_dir(tmp.path().join("db"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .max()
            .unwrap();
        let text = std::fs::read_to_string(options).unwrap();
        assert!(text.contains("recycle_log_file_num=3"), "{text}");
        assert!(text.contains("max_total_wal_size=104857600"), "{text}");
    }
}
