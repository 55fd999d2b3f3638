//! Online backups and offline restores of a data directory.
//!
//! A backup is a folder holding the node's stores, the small files beside them that a
//! restored daemon needs to be the same server (`quic/reset-key`, the generated token secret
//! `auth/secret`, the development certificate `tls/`), and `chatd-backup.json`, its
//! [`Manifest`]. The stores are RocksDB checkpoints of the running stores: each consistent,
//! and holding every write acknowledged before it began, the bridge's cursor and the account
//! restrictions included. A single node's one store goes in `db/`; a node with
//! `cluster.partitions` has each partition it holds in `partitions/NNN/` (each checkpoint
//! consistent on its own; they are taken one after the other). `chatd backup` asks the
//! running daemon for one through the admin listener (the daemon writes it, so the folder
//! must be writable by the daemon's user); `chatd restore` copies one into an empty data
//! directory (and, for partitions, into the configured partitions directory, where none of
//! them may exist) while no daemon runs on it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{self, Store, Stores, layout};

/// The manifest file of a backup.
pub const MANIFEST: &str = "chatd-backup.json";

/// The folders beside the store that a backup carries when they exist.
const BESIDE: [&str; 3] = ["quic", "auth", "tls"];

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The version of the chatd that took it.
    pub chatd: String,
    /// The store format of `db/` (or of the partitions').
    pub format: u32,
    /// When the backup began, ms since the Unix epoch.
    pub taken_at_ms: u64,
    /// The newest outbox event seq in it (a single node's; 0 with partitions, whose own
    /// are in `partitions`).
    pub outbox_head: u64,
    /// The bridge's confirmed cursor in it: a restored daemon publishes what follows (a
    /// single node's; 0 with partitions).
    pub bridge_cursor: u64,
    /// The folders beside the store it carries.
    pub beside: Vec<String>,
    /// With partitions, the cluster's partition count (0: a single node's store in `db/`).
    #[serde(default)]
    pub partition_count: usize,
    /// With partitions, the ones the node held when the backup began, each in
    /// `partitions/NNN/`.
    #[serde(default)]
    pub partitions: Vec<PartitionBackup>,
}

/// One partition in a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionBackup {
    /// Its number.
    pub partition: usize,
    /// The newest outbox event seq in it.
    pub outbox_head: u64,
    /// The bridge's confirmed cursor in it.
    pub bridge_cursor: u64,
}

/// Where a restore puts the stores: what the configuration says.
#[derive(Clone, Copy, Debug)]
pub enum Layout<'a> {
    /// A single node's one store, in the data directory's `db/`.
    Single,
    /// `count` partitions (`cluster.partitions`) in `dir` (the partitions directory).
    Partitions {
        /// The partitions directory.
        dir: &'a Path,
        /// The configured partition count.
        count: usize,
    },
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> store::Error {
    store::Error::Backup(format!("{what} {}: {e}", path.display()))
}

/// Takes a backup of the running `stores` (whose data directory is `data_dir`) into `dir`,
/// which must not exist yet (its parent is created): a single node's one store, or the
/// partitions the node holds.
///
/// # Errors
/// When `dir` exists or cannot be written, the node holds nothing, or a checkpoint fails;
/// a partial backup is removed.
pub fn take(stores: &Stores, data_dir: &Path, dir: &Path) -> Result<Manifest, store::Error> {
    let held = stores.holding();
    let Some(first) = held.first() else {
        return Err(store::Error::Backup(
            "this node holds no partition now: back up the nodes that hold them".to_owned(),
        ));
    };
    // A single node's store carries no partition stamp.
    let single = stores.partition(*first)?.partition_stamp()?.is_none();
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed("cannot create", parent, e))?;
    }
    // Created here, atomically: a folder that exists (another backup's) is never touched,
    // and only what this call created is removed when it fails.
    std::fs::create_dir(dir).map_err(|e| failed("refusing to write into", dir, e))?;
    let taken_at_ms = crate::shard::now_ms().0;
    let count = if single { 0 } else { stores.map().count() };
    let result = write(stores, &held, count, data_dir, dir, taken_at_ms);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn write(
    stores: &Stores,
    held: &[usize],
    count: usize,
    data_dir: &Path,
    dir: &Path,
    taken_at_ms: u64,
) -> Result<Manifest, store::Error> {
    let mut manifest = Manifest {
        chatd: env!("CARGO_PKG_VERSION").to_owned(),
        format: store::FORMAT,
        taken_at_ms,
        outbox_head: 0,
        bridge_cursor: 0,
        beside: Vec::new(),
        partition_count: count,
        partitions: Vec::new(),
    };
    if count == 0 {
        stores.partition(held[0])?.checkpoint(&dir.join("db"))?;
        // Read back from the copy: what the manifest says is what the backup holds.
        let copy = Store::open_read_only(&dir.join("db"))?;
        manifest.format = copy.format()?.unwrap_or(store::FORMAT);
        manifest.outbox_head = copy.outbox_last()?;
        manifest.bridge_cursor = copy.bridge_cursor()?;
    } else {
        let parted = dir.join("partitions");
        std::fs::create_dir(&parted).map_err(|e| failed("cannot create", &parted, e))?;
        for &p in held {
            // Each store is held only for its own checkpoint: a partition given up meanwhile
            // closes at once for its next holder, and is left out of this backup.
            let Ok(store) = stores.partition(p) else {
                continue;
            };
            let to = layout::partition_dir(&parted, p);
            store.checkpoint(&to)?;
            drop(store);
            let copy = Store::open_read_only(&to)?;
            manifest.format = copy.format()?.unwrap_or(store::FORMAT);
            manifest.partitions.push(PartitionBackup {
                partition: p,
                outbox_head: copy.outbox_last()?,
                bridge_cursor: copy.bridge_cursor()?,
            });
        }
        if manifest.partitions.is_empty() {
            return Err(store::Error::Backup(
                "this node gave up every partition during the backup".to_owned(),
            ));
        }
        sync_dir(&parted)?;
    }
    for name in BESIDE {
        let from = data_dir.join(name);
        if from.is_dir() {
            copy_dir(&from, &dir.join(name))?;
            manifest.beside.push(name.to_owned());
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| failed("manifest", dir, e))?;
    let path = dir.join(MANIFEST);
    crate::fsutil::write_private(&path, &json).map_err(|e| failed("cannot write", &path, e))?;
    sync_dir(dir)?;
    Ok(manifest)
}

/// Reads a backup's manifest.
///
/// # Errors
/// When `dir` holds no readable manifest.
pub fn manifest(dir: &Path) -> Result<Manifest, store::Error> {
    let path = dir.join(MANIFEST);
    let text =
        std::fs::read(&path).map_err(|e| failed("not a chatd backup (no manifest):", &path, e))?;
    serde_json::from_slice(&text).map_err(|e| failed("unreadable manifest", &path, e))
}

/// A store a restore copies: from where in the backup, to where, and the partition and
/// count it must be stamped as (none for a single node's store).
type Restored = (PathBuf, PathBuf, Option<(usize, usize)>);

/// Restores the backup in `backup` into `data_dir` (and, for partitions, the partitions
/// directory `layout` names), which must hold none of its stores; takes the data
/// directory's lock meanwhile, so no daemon can run on it. Checks that each restored store
/// opens (and is the partition it should be).
///
/// # Errors
/// When `backup` is not a backup, its format is newer than this chatd reads, its layout is
/// not the configured one (a single node's store, or partitions of another count), a store
/// it holds exists where it goes or the data directory is locked, or a copy fails (a
/// partial restore is removed).
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    layout: Layout<'_>,
) -> Result<Manifest, store::Error> {
    let manifest = manifest(backup)?;
    if manifest.format > store::FORMAT {
        return Err(store::Error::NewerFormat {
            found: manifest.format,
            supported: store::FORMAT,
        });
    }
    // Only the folders a backup may carry, whatever the manifest says.
    if let Some(name) = manifest
        .beside
        .iter()
        .find(|n| !BESIDE.contains(&n.as_str()))
    {
        return Err(failed(
            &format!("unexpected folder {name:?} in the manifest of"),
            backup,
            "not restored",
        ));
    }
    // Where each store goes, and what it must be stamped as.
    let stores: Vec<Restored> = match (layout, manifest.partition_count) {
        (Layout::Single, 0) => vec![(backup.join("db"), data_dir.join("db"), None)],
        (Layout::Partitions { dir, count }, n) if n == count && n > 0 => {
            (manifest.partitions.iter())
                .map(|part| {
                    let from = layout::partition_dir(&backup.join("partitions"), part.partition);
                    let to = layout::partition_dir(dir, part.partition);
                    (from, to, Some((part.partition, count)))
                })
                .collect()
        }
        (Layout::Single, n) => {
            return Err(store::Error::Layout(format!(
                "the backup holds partitions of a cluster of {n}: set cluster.partitions = {n}"
            )));
        }
        (Layout::Partitions { count, .. }, 0) => {
            return Err(store::Error::Layout(format!(
                "the backup holds a single node's store, and cluster.partitions is {count}"
            )));
        }
        (Layout::Partitions { count, .. }, n) => {
            return Err(store::Error::Layout(format!(
                "the backup holds partitions of a cluster of {n}, and cluster.partitions \
                     is {count}"
            )));
        }
    };
    if manifest
        .partitions
        .iter()
        .any(|part| part.partition >= manifest.partition_count.max(1))
    {
        return Err(failed(
            "a partition beyond the count in",
            backup,
            "not restored",
        ));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| failed("cannot create", data_dir, e))?;
    let _lock = crate::guard::DataDirLock::acquire(data_dir)
        .map_err(|e| store::Error::Backup(e.to_string()))?;
    if let Some((_, to, _)) = stores.iter().find(|(_, to, _)| to.exists()) {
        return Err(failed(
            "refusing to restore over the store in",
            to,
            "restore where none of the backup's stores exists",
        ));
    }
    let mut copied = Vec::new();
    let mut result = Ok(());
    for (from, to, _) in &stores {
        if let Some(parent) = to.parent() {
            result =
                std::fs::create_dir_all(parent).map_err(|e| failed("cannot create", parent, e));
        }
        if result.is_err() {
            break;
        }
        copied.push(to.clone());
        result = copy_dir(from, to);
        if result.is_err() {
            break;
        }
    }
    for name in &manifest.beside {
        if result.is_err() {
            break;
        }
        let to = data_dir.join(name);
        if to.exists() {
            result = Err(failed("refusing to replace", &to, "it exists"));
            break;
        }
        copied.push(to.clone());
        result = copy_dir(&backup.join(name), &to);
    }
    let result = result
        .and_then(|()| {
            stores.iter().try_for_each(|(_, to, stamp)| {
                let store = Store::open_read_only(to)?;
                if store.partition_stamp()? == *stamp {
                    Ok(())
                } else {
                    Err(failed(
                        "not the partition it should be:",
                        to,
                        "check the backup",
                    ))
                }
            })
        })
        .and_then(|()| sync_dir(data_dir));
    if let Err(e) = result {
        for path in copied {
            let _ = std::fs::remove_dir_all(path);
        }
        return Err(e);
    }
    Ok(manifest)
}

/// Copies a folder of files and folders, keeping permissions, syncing each file.
fn copy_dir(from: &Path, to: &Path) -> Result<(), store::Error> {
    std::fs::create_dir(to).map_err(|e| failed("cannot create", to, e))?;
    let permissions = std::fs::metadata(from)
        .map_err(|e| failed("cannot read", from, e))?
        .permissions();
    std::fs::set_permissions(to, permissions).map_err(|e| failed("cannot set mode of", to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| failed("cannot list", from, e))? {
        let entry = entry.map_err(|e| failed("cannot list", from, e))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| failed("cannot read", &source, e))?;
        if kind.is_dir() {
            copy_dir(&source, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target).map_err(|e| failed("cannot copy", &source, e))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(|e| failed("cannot sync", &target, e))?;
        }
    }
    sync_dir(to)
}

fn sync_dir(dir: &Path) -> Result<(), store::Error> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| failed("cannot sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_restores_into_an_empty_dir_only() {
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        let store = Stores::single(Store::open(&data.join("db")).unwrap());
        crate::fsutil::write_private(&data.join("auth/secret"), b"secret").unwrap();
        let backup = temp.path().join("backups/one");
        let taken = take(&store, &data, &backup).unwrap();
        assert_eq!(taken.beside, ["auth"]);
        assert_eq!(taken.format, store::FORMAT);
        // Never over an existing backup, never over a store.
        assert!(take(&store, &data, &backup).is_err());
        assert!(restore(&backup, &data, Layout::Single).is_err());
        let fresh = temp.path().join("fresh");
        let parts = fresh.join("partitions");
        let parted = Layout::Partitions {
            dir: &parts,
            count: 4,
        };
        assert!(restore(&backup, &fresh, parted).is_err(), "not partitions");
        assert_eq!(restore(&backup, &fresh, Layout::Single).unwrap(), taken);
        assert_eq!(std::fs::read(fresh.join("auth/secret")).unwrap(), b"secret");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(fresh.join("auth/secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Store::open(&fresh.join("db")).unwrap();
        // Not a backup.
        assert!(restore(temp.path(), &temp.path().join("other"), Layout::Single).is_err());
    }

    #[test]
    fn a_partitioned_node_backs_up_the_partitions_it_holds() {
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        let wal = store::WalOptions::default();
        // A node of 4 partitions in `dir` that holds those `holds` picks: its stores, and
        // every store opened (kept open beside them).
        let node = |dir: &Path, holds: fn(usize) -> bool| {
            let all = Stores::open(&dir.join("db"), &dir.join("partitions"), 4, wal).unwrap();
            let held = Stores::none(all.map());
            for (p, store) in all.held() {
                if holds(p) {
                    held.install(p, store);
                }
            }
            (held, all)
        };
        // The node holds partitions 1 and 3.
        let (held, all) = node(&data, |p| p % 2 == 1);
        let backup = temp.path().join("backups/odd");
        let taken = take(&held, &data, &backup).unwrap();
        assert_eq!(taken.partition_count, 4);
        let numbers: Vec<usize> = taken.partitions.iter().map(|p| p.partition).collect();
        assert_eq!(numbers, [1, 3]);
        drop((held, all));
        // Only into partitions of the same count, where none of them exists.
        let fresh = temp.path().join("fresh");
        let parts = fresh.join("partitions");
        assert!(restore(&backup, &fresh, Layout::Single).is_err());
        let three = Layout::Partitions {
            dir: &parts,
            count: 3,
        };
        assert!(restore(&backup, &fresh, three).is_err());
        let four = Layout::Partitions {
            dir: &parts,
            count: 4,
        };
        std::fs::create_dir_all(layout::partition_dir(&parts, 3)).unwrap();
        assert!(
            restore(&backup, &fresh, four).is_err(),
            "partition 3 exists"
        );
        std::fs::remove_dir(layout::partition_dir(&parts, 3)).unwrap();
        assert_eq!(restore(&backup, &fresh, four).unwrap(), taken);
        for p in [1, 3] {
            let store = Store::open_read_only(&layout::partition_dir(&parts, p)).unwrap();
            assert_eq!(store.partition_stamp().unwrap(), Some((p, 4)));
        }
        assert!(!layout::partition_dir(&parts, 0).exists());
        // The other node's partitions go beside them, from its own backup, later.
        let other = temp.path().join("other");
        let (evens, stores) = node(&other, |p| p % 2 == 0);
        let backup = temp.path().join("backups/even");
        take(&evens, &other, &backup).unwrap();
        drop((evens, stores));
        std::fs::remove_dir_all(fresh.join("auth")).ok();
        restore(&backup, &fresh, four).unwrap();
        let whole = Stores::open(&fresh.join("db"), &parts, 4, wal).unwrap();
        assert_eq!(whole.held().len(), 4);
    }
}
