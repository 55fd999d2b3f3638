//! Where a node's stores are in its data directory: a single node's one store in `db/`; with
//! `cluster.partitions = P`, partition `N`'s in `partitions/NNN/` (three digits), each
//! stamped with its number and the partition count, so that a directory is never opened as
//! another partition or under another count.

use std::path::{Path, PathBuf};

use super::{Cf, Error, Store, Stores, WalOptions};

/// `Cf::Meta` key of a partition's stamp: its number and the partition count (2 bytes each,
/// big-endian).
const PARTITION_KEY: &[u8] = b"store.partition";

/// The directory of partition `p` among the partitions in `dir`.
#[must_use]
pub fn partition_dir(dir: &Path, p: usize) -> PathBuf {
    dir.join(format!("{p:03}"))
}

impl Stores {
    /// Opens (creating what is missing) the stores of a node: its one store in `single`
    /// when `partitions` is 0, else every partition's in `parted`.
    ///
    /// # Errors
    /// When a store cannot be opened, or the directory holds another layout: a single
    /// node's store where partitions are configured, partitions where none are, a partition
    /// stamped with another number or count, or more partitions than configured.
    pub fn open(
        single: &Path,
        parted: &Path,
        partitions: usize,
        wal: WalOptions,
    ) -> Result<Stores, Error> {
        let layout = |what: String| Err(Error::Layout(what));
        if partitions == 0 {
            if has_entries(parted) {
                return layout(format!(
                    "{} holds a cluster's partitions; set cluster.partitions to their count",
                    parted.display()
                ));
            }
            return Ok(Stores::single(Store::open_with(single, wal)?));
        }
        if single.join("CURRENT").exists() {
            return layout(format!(
                "{} holds a single node's store, and cluster.partitions is {partitions}: a \
                 store does not move into partitions by itself (keep cluster.partitions = 0, \
                 or start the cluster in a new data directory)",
                single.display()
            ));
        }
        let beyond = partition_dir(parted, partitions);
        if beyond.exists() {
            return layout(format!(
                "{} exists: the partitions were created with a larger cluster.partitions \
                 than {partitions}",
                beyond.display()
            ));
        }
        let mut stores = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let store = Store::open_with(&partition_dir(parted, p), wal)?;
            store.check_partition(p, partitions)?;
            stores.push(store);
        }
        Ok(Stores::partitioned(stores))
    }
}

impl Store {
    /// The partition this store is stamped as, and the partition count: `None` for a single
    /// node's store.
    ///
    /// # Errors
    /// RocksDB errors or an unreadable stamp.
    pub fn partition_stamp(&self) -> Result<Option<(usize, usize)>, Error> {
        match self.get(Cf::Meta, PARTITION_KEY)? {
            None => Ok(None),
            Some(found) => match <[u8; 4]>::try_from(found.as_slice()) {
                Ok([a, b, c, d]) => Ok(Some((
                    usize::from(u16::from_be_bytes([a, b])),
                    usize::from(u16::from_be_bytes([c, d])),
                ))),
                Err(_) => Err(Error::Layout(format!(
                    "{}: unreadable partition stamp",
                    self.db().path().display()
                ))),
            },
        }
    }

    /// Stamps a new partition's store with `p` of `count`, or checks the stamp it has.
    pub(crate) fn check_partition(&self, p: usize, count: usize) -> Result<(), Error> {
        let stamp = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes();
        let mut want = stamp(p).to_vec();
        want.extend(stamp(count));
        match self.get(Cf::Meta, PARTITION_KEY)? {
            Some(found) if found == want => Ok(()),
            Some(found) => Err(Error::Layout(match <[u8; 4]>::try_from(found.as_slice()) {
                Ok([a, b, c, d]) => format!(
                    "{} is stamped as partition {} of {}, not {p} of {count}",
                    self.db().path().display(),
                    u16::from_be_bytes([a, b]),
                    u16::from_be_bytes([c, d]),
                ),
                Err(_) => format!("{}: unreadable partition stamp", self.db().path().display()),
            })),
            None => {
                let mut options = rocksdb::WriteOptions::default();
                options.set_sync(true);
                self.db()
                    .put_cf_opt(self.cf(Cf::Meta)?, PARTITION_KEY, want, &options)?;
                Ok(())
            }
        }
    }
}

/// Whether `dir` is a directory with anything in it.
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's stores in `data_dir`, as the daemon opens them.
    fn open(data_dir: &Path, partitions: usize, wal: WalOptions) -> Result<Stores, Error> {
        let parted = data_dir.join("partitions");
        Stores::open(&data_dir.join("db"), &parted, partitions, wal)
    }

    fn refused(result: Result<Stores, Error>) -> String {
        match result {
            Err(Error::Layout(why)) => why,
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn a_data_directory_keeps_the_layout_it_was_created_with() {
        let wal = WalOptions::default();
        let single = tempfile::tempdir().unwrap();
        drop(open(single.path(), 0, wal).unwrap());
        assert!(refused(open(single.path(), 4, wal)).contains("single node's store"));
        let parted = tempfile::tempdir().unwrap();
        let stores = open(parted.path(), 4, wal).unwrap();
        assert_eq!((stores.all().unwrap().len(), stores.map().count()), (4, 4));
        drop(stores);
        let dir = parted.path().join("partitions");
        assert!(partition_dir(&dir, 3).join("CURRENT").exists());
        assert!(refused(open(parted.path(), 0, wal)).contains("set cluster.partitions"));
        assert!(refused(open(parted.path(), 3, wal)).contains("larger"));
        // A partition directory put in another's place is recognised by its stamp.
        let (two, three) = (partition_dir(&dir, 2), partition_dir(&dir, 3));
        std::fs::rename(&two, dir.join("aside")).unwrap();
        std::fs::rename(&three, &two).unwrap();
        assert!(refused(open(parted.path(), 3, wal)).contains("stamped as partition"));
        std::fs::rename(&two, &three).unwrap();
        std::fs::rename(dir.join("aside"), &two).unwrap();
        assert_eq!(open(parted.path(), 4, wal).unwrap().held().len(), 4);
        assert!(refused(open(parted.path(), 5, wal)).contains("not 0 of 5"));
    }
}
