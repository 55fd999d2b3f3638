//! Online backups and offline restores of a data directory.
//!
//! A backup is a folder holding `db/` (a RocksDB checkpoint of the running store: consistent,
//! and holding every write acknowledged before it began, the bridge's cursor and the account
//! restrictions included), the small files beside the store that a restored daemon needs to
//! be the same server (`quic/reset-key`, the generated token secret `auth/secret`, the
//! development certificate `tls/`), and `chatd-backup.json`, its [`Manifest`]. `chatd backup`
//! asks the running daemon for one through the admin listener (the daemon writes it, so the
//! folder must be writable by the daemon's user); `chatd restore` copies one into an empty
//! data directory while no daemon runs on it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::{self, Store, Stores};

/// The manifest file of a backup.
pub const MANIFEST: &str = "chatd-backup.json";

/// The folders beside the store that a backup carries when they exist.
const BESIDE: [&str; 3] = ["quic", "auth", "tls"];

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The version of the chatd that took it.
    pub chatd: String,
    /// The store format of `db/`.
    pub format: u32,
    /// When the backup began, ms since the Unix epoch.
    pub taken_at_ms: u64,
    /// The newest outbox event seq in it.
    pub outbox_head: u64,
    /// The bridge's confirmed cursor in it: a restored daemon publishes what follows.
    pub bridge_cursor: u64,
    /// The folders beside the store it carries.
    pub beside: Vec<String>,
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> store::Error {
    store::Error::Backup(format!("{what} {}: {e}", path.display()))
}

/// Takes a backup of the running `store` (whose data directory is `data_dir`) into `dir`,
/// which must not exist yet (its parent is created).
///
/// # Errors
/// When `dir` exists or cannot be written, or the checkpoint fails; a partial backup is
/// removed.
pub fn take(stores: &Stores, data_dir: &Path, dir: &Path) -> Result<Manifest, store::Error> {
    // A backup holds one store; a node's partitions would each need their own.
    let held = stores.held();
    let ([(_, store)], 1) = (held.as_slice(), stores.map().count()) else {
        return Err(store::Error::Backup(
            "this node has partitions: a backup takes a single node's one store".to_owned(),
        ));
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed("cannot create", parent, e))?;
    }
    // Created here, atomically: a folder that exists (another backup's) is never touched,
    // and only what this call created is removed when it fails.
    std::fs::create_dir(dir).map_err(|e| failed("refusing to write into", dir, e))?;
    let taken_at_ms = crate::shard::now_ms().0;
    let result = write(store, data_dir, dir, taken_at_ms);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn write(
    store: &Store,
    data_dir: &Path,
    dir: &Path,
    taken_at_ms: u64,
) -> Result<Manifest, store::Error> {
    store.checkpoint(&dir.join("db"))?;
    let mut beside = Vec::new();
    for name in BESIDE {
        let from = data_dir.join(name);
        if from.is_dir() {
            copy_dir(&from, &dir.join(name))?;
            beside.push(name.to_owned());
        }
    }
    // Read back from the copy: what the manifest says is what the backup holds.
    let copy = Store::open_read_only(&dir.join("db"))?;
    let manifest = Manifest {
        chatd: env!("CARGO_PKG_VERSION").to_owned(),
        format: copy.format()?.unwrap_or(store::FORMAT),
        taken_at_ms,
        outbox_head: copy.outbox_last()?,
        bridge_cursor: copy.bridge_cursor()?,
        beside,
    };
    drop(copy);
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

/// Restores the backup in `backup` into `data_dir`, which must hold no store; takes the
/// data directory's lock meanwhile, so no daemon can run on it. Checks that the restored
/// store opens.
///
/// # Errors
/// When `backup` is not a backup, its format is newer than this chatd reads, `data_dir`
/// holds a store or is locked, or a copy fails (a partial restore is removed).
pub fn restore(backup: &Path, data_dir: &Path) -> Result<Manifest, store::Error> {
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
    std::fs::create_dir_all(data_dir).map_err(|e| failed("cannot create", data_dir, e))?;
    let _lock = crate::guard::DataDirLock::acquire(data_dir)
        .map_err(|e| store::Error::Backup(e.to_string()))?;
    let db = data_dir.join("db");
    if db.exists() {
        return Err(failed(
            "refusing to restore over the store in",
            &db,
            "restore into an empty data directory",
        ));
    }
    let mut copied = vec![db.clone()];
    let mut result = copy_dir(&backup.join("db"), &db);
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
        .and_then(|()| Store::open_read_only(&db).map(drop))
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
        assert!(restore(&backup, &data).is_err());
        let fresh = temp.path().join("fresh");
        assert_eq!(restore(&backup, &fresh).unwrap(), taken);
        assert_eq!(std::fs::read(fresh.join("auth/secret")).unwrap(), b"secret");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(fresh.join("auth/secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Store::open(&fresh.join("db")).unwrap();
        // Not a backup.
        assert!(restore(temp.path(), &temp.path().join("other")).is_err());
    }
}
