//! The store's own open, format and checkpoint.

use super::*;

fn put_meta(store: &Store, key: &[u8], value: Option<&[u8]>) {
    let cf = store.cf(Cf::Meta).unwrap();
    match value {
        Some(v) => store.db.put_cf(cf, key, v).unwrap(),
        None => store.db.delete_cf(cf, key).unwrap(),
    }
}

#[test]
fn a_new_store_is_stamped_an_old_one_upgraded_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.format().unwrap(), Some(FORMAT));
    // As written before the stamp existed.
    put_meta(&store, FORMAT_KEY, None);
    put_meta(&store, b"kept", Some(b"yes"));
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.format().unwrap(), Some(FORMAT));
    assert_eq!(
        store.get(Cf::Meta, b"kept").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    // As written by a newer chatd.
    put_meta(&store, FORMAT_KEY, Some(&(FORMAT + 1).to_be_bytes()));
    drop(store);
    // The stamp is in the WAL only (nothing flushed): the check replays the WAL's records
    // of the family that holds it.
    for refused in [
        Store::check_format(&path).err(),
        Store::open(&path).err(),
        Store::open_read_only(&path).err(),
    ] {
        match refused {
            Some(Error::NewerFormat { found, supported }) => {
                assert_eq!((found, supported), (FORMAT + 1, FORMAT));
            }
            other => panic!("{:?}", other.map(|e| e.to_string())),
        }
    }
}

#[test]
fn a_checkpoint_holds_every_write_before_it_and_opens_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    for i in 0u64..100 {
        put_meta(&store, &i.to_be_bytes(), Some(b"v"));
    }
    let copy = dir.path().join("copy");
    store.checkpoint(&copy).unwrap();
    put_meta(&store, b"after", Some(b"v"));
    drop(store);
    let copy = Store::open_read_only(&copy).unwrap();
    for i in 0u64..100 {
        assert!(copy.get(Cf::Meta, &i.to_be_bytes()).unwrap().is_some());
    }
    assert!(copy.get(Cf::Meta, b"after").unwrap().is_none());
    assert_eq!(copy.format().unwrap(), Some(FORMAT));
}

#[test]
fn a_flushed_store_has_nothing_left_to_replay_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    let in_memtables = |store: &Store| -> u64 {
        let count = |cf: Cf, property: &str| {
            (store
                .db
                .property_int_value_cf(store.cf(cf).unwrap(), property))
            .unwrap()
            .unwrap()
        };
        (Cf::ALL.iter())
            .map(|cf| {
                count(*cf, "rocksdb.num-entries-active-mem-table")
                    + count(*cf, "rocksdb.num-entries-imm-mem-tables")
            })
            .sum()
    };
    for (i, cf) in Cf::ALL.iter().enumerate() {
        let key = u64::try_from(i).unwrap().to_be_bytes();
        store.db.put_cf(store.cf(*cf).unwrap(), key, b"v").unwrap();
    }
    assert!(in_memtables(&store) >= u64::try_from(Cf::ALL.len()).unwrap());
    store.flush().unwrap();
    assert_eq!(in_memtables(&store), 0, "every family's memtable flushed");
    drop(store);
    Store::check_format(&path).unwrap();
    let store = Store::open(&path).unwrap();
    for (i, cf) in Cf::ALL.iter().enumerate() {
        let key = u64::try_from(i).unwrap().to_be_bytes();
        assert_eq!(store.get(*cf, &key).unwrap().as_deref(), Some(&b"v"[..]));
    }
}

#[test]
fn a_store_without_a_later_column_family_is_checked_and_opened() {
    // As a chatd before the `links` family (format 3) left it: the check reads only the
    // stamp's family, and the open adds the missing one (then the upgrades run).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let names = (Cf::ALL.iter())
            .filter(|cf| **cf != Cf::Links)
            .map(|cf| cf.name());
        let db = DB::open_cf(&options, &path, names).unwrap();
        (db.put_cf(
            db.cf_handle(Cf::Meta.name()).unwrap(),
            FORMAT_KEY,
            3u32.to_be_bytes(),
        ))
        .unwrap();
    }
    Store::check_format(&path).unwrap();
    let store = Store::open(&path).unwrap();
    assert!(store.cf(Cf::Links).is_ok());
    assert_eq!(store.format().unwrap(), Some(FORMAT));
}
