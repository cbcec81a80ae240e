use super::*;
use gantry_model::testing::Rng;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("data")).unwrap();
    (dir, store)
}

/// Bytes that compress poorly and differ by seed.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    Rng(seed | 1).bytes(n)
}

#[test]
fn round_trips_of_every_size_and_content_addressing() {
    let (_d, store) = store();
    for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17] {
        let data = bytes(n, n as u64);
        let id = store.put_bytes(&data).unwrap();
        let digest = ring::digest::digest(&SHA256, &data);
        assert_eq!(id, data_encoding::HEXLOWER.encode(digest.as_ref()));
        assert!(store.get(&id).unwrap() == data, "{n} bytes");
        // The same content again: the same id, nothing new.
        assert_eq!(store.put_bytes(&data).unwrap(), id);
    }
    assert_eq!(store.list().unwrap().len(), 6);
    for id in store.list().unwrap() {
        let plain = store.get(&id).unwrap().len() as u64;
        let on_disk = std::fs::metadata(store.object_path(&id)).unwrap().len();
        assert_eq!(sealed_len(plain), on_disk, "{plain} bytes");
    }
    // Nothing is left in tmp, and nothing stored is plaintext.
    assert_eq!(
        std::fs::read_dir(store.root().join("objects/tmp"))
            .unwrap()
            .count(),
        0
    );
    let secret = b"the quick brown fox jumps over the lazy dog, in plain text";
    let id = store.put_bytes(secret).unwrap();
    let on_disk = std::fs::read(store.object_path(&id)).unwrap();
    assert!(!on_disk.windows(16).any(|w| w == &secret[..16]));
}

#[test]
fn any_flipped_bit_is_an_error_never_data() {
    let (_d, store) = store();
    let data = bytes(3000, 5);
    let id = store.put_bytes(&data).unwrap();
    for path in [store.object_path(&id), store.key_path(&id)] {
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                std::fs::write(&path, &bad).unwrap();
                // A flip may leave the meaning intact (hex case in the key file): then the data
                // must be exactly the original. Otherwise an error, never other bytes.
                if let Ok(got) = store.get(&id) {
                    assert!(
                        got == data,
                        "{}: byte {i} bit {bit:#x} returned wrong data",
                        path.display()
                    );
                }
            }
        }
        std::fs::write(&path, &good).unwrap();
    }
    assert!(store.get(&id).unwrap() == data);
}

#[test]
fn truncated_extended_swapped_and_moved_objects_fail() {
    let (_d, store) = store();
    let a = bytes(CHUNK + 100, 1);
    let b = bytes(CHUNK + 100, 2);
    let (ia, ib) = (store.put_bytes(&a).unwrap(), store.put_bytes(&b).unwrap());
    let pa = store.object_path(&ia);
    let good = std::fs::read(&pa).unwrap();
    let err = |store: &Store| store.get(&ia).unwrap_err().to_string();

    // Cut after the first chunk: no last chunk.
    std::fs::write(&pa, &good[..20 + 4 + CHUNK + TAG]).unwrap();
    assert!(err(&store).contains("truncated"), "{}", err(&store));
    // Extra bytes after the last chunk.
    let mut longer = good.clone();
    longer.extend_from_slice(b"more");
    std::fs::write(&pa, &longer).unwrap();
    assert!(
        err(&store).contains("after its last chunk"),
        "{}",
        err(&store)
    );
    // Another object's chunks under this id (its data key does not open them).
    std::fs::copy(store.object_path(&ib), &pa).unwrap();
    assert!(
        err(&store).contains("does not authenticate"),
        "{}",
        err(&store)
    );
    std::fs::write(&pa, &good).unwrap();
    // Another object's key file under this id (the id is bound into the wrapping).
    let ka = std::fs::read(store.key_path(&ia)).unwrap();
    std::fs::copy(store.key_path(&ib), store.key_path(&ia)).unwrap();
    assert!(
        err(&store).contains("data key does not authenticate"),
        "{}",
        err(&store)
    );
    std::fs::write(store.key_path(&ia), &ka).unwrap();
    assert!(store.get(&ia).unwrap() == a);
    // Unknown and malformed ids.
    assert!(matches!(
        store.get(&"0".repeat(64)),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get("../../etc/passwd"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn rotation_rewraps_keys_without_rewriting_objects() {
    let (dir, store) = store();
    let items: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let data = bytes(1000 + i, i as u64);
            (store.put_bytes(&data).unwrap(), data)
        })
        .collect();
    let old_master = store.master_id().to_string();
    let objects_before: Vec<Vec<u8>> = items
        .iter()
        .map(|(id, _)| std::fs::read(store.object_path(id)).unwrap())
        .collect();
    let r = store.rotate().unwrap();
    assert_eq!(r.rewrapped, 5);
    assert_eq!(r.retired, vec![old_master.clone()]);
    assert_ne!(r.new_master, old_master);
    let root = dir.path().join("data");
    assert!(!root.join(format!("keys/master-{old_master}.key")).exists());
    // Reopened from disk: every object reads, byte-identical ciphertext.
    let store = Store::open(&root).unwrap();
    assert_eq!(store.master_id(), r.new_master);
    for ((id, data), before) in items.iter().zip(&objects_before) {
        assert!(store.get(id).unwrap() == *data);
        assert!(std::fs::read(store.object_path(id)).unwrap() == *before);
        let key: KeyFile =
            serde_json::from_slice(&std::fs::read(store.key_path(id)).unwrap()).unwrap();
        assert_eq!(key.master, r.new_master);
    }
}

#[test]
fn init_refuses_an_existing_directory_and_keys_are_private() {
    let (dir, _store) = store();
    let root = dir.path().join("data");
    let e = Store::init(&root).unwrap_err().to_string();
    assert!(e.contains("already a Gantry data directory"), "{e}");
    let e = Store::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a Gantry data directory"), "{e}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(root.join("keys")).unwrap() {
            let meta = entry.unwrap().metadata().unwrap();
            assert_eq!(meta.permissions().mode() & 0o077, 0, "keys are owner-only");
        }
    }
    assert!(root.join("keys/host.pk8").exists());
}

/// Found by a review: the objects' shard directories (`objects/ab`) were made with the
/// process's umask, 0755, where the README promises an owner-only data directory. Every
/// directory is made owner-only, and those an earlier version made are mended on open.
#[cfg(unix)]
#[test]
fn every_directory_of_the_store_is_owner_only_and_older_ones_are_mended_on_open() {
    use std::os::unix::fs::PermissionsExt;
    fn loose_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        if mode & 0o077 != 0 {
            found.push(dir.to_path_buf());
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                loose_dirs(&path, found);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let store = Store::init(&root).unwrap();
    for seed in 0..8 {
        store.put_bytes(&bytes(100, seed)).unwrap();
    }
    let mut loose = Vec::new();
    loose_dirs(&root, &mut loose);
    assert!(loose.is_empty(), "not owner-only: {loose:?}");
    let shard = store.shards().unwrap().remove(0);
    drop(store);
    std::fs::set_permissions(&shard, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _store = Store::open_exclusive(&root, "test").unwrap();
    loose_dirs(&root, &mut loose);
    assert!(loose.is_empty(), "not owner-only after open: {loose:?}");
}

/// Issue 10, section 3: concurrent uploads of one content under different names paired one
/// put's key file with another's object, so every copy became unreadable.
#[test]
fn concurrent_puts_of_one_content_all_stay_readable() {
    let (_d, store) = store();
    for round in 0..6u64 {
        let data = bytes(CHUNK + 4096 * round as usize, 100 + round);
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.put_bytes(&data).expect("every put succeeds")))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for id in &ids {
            assert!(store.get(id).expect("every acknowledged put reads") == data);
        }
    }
    for id in store.list().unwrap() {
        store.get(&id).expect("the whole store verifies");
    }
}

/// Issue 10, section 3: the daemon's store must survive a rotation while puts and reads go on
/// (the masters sit behind a lock; a put publishes under the master current at that moment).
#[test]
fn rotation_while_puts_and_reads_go_on_loses_nothing() {
    let (dir, store) = store();
    let before: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            let data = bytes(500 + i, 1000 + i as u64);
            (store.put_bytes(&data).unwrap(), data)
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let during = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3u64)
            .map(|t| {
                let (store, stop) = (&store, &stop);
                s.spawn(move || {
                    let mut put = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) || i < 20 {
                        let data = bytes(300 + i, 5000 + t * 1000 + i as u64);
                        put.push((store.put_bytes(&data).expect("a put during rotation"), data));
                        i += 1;
                    }
                    put
                })
            })
            .collect();
        let reader = s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (id, data) in &before {
                    assert!(store.get(id).expect("a read during rotation") == *data);
                }
            }
        });
        for _ in 0..3 {
            let r = store.rotate().unwrap();
            assert!(r.unreadable.is_empty(), "{r:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    // From disk, in a fresh store: every object reads, and only the current master is left.
    drop(store);
    let store = Store::open(&dir.path().join("data")).unwrap();
    for (id, data) in before.iter().chain(&during) {
        assert!(store.get(id).unwrap() == *data);
    }
    let masters = std::fs::read_dir(dir.path().join("data/keys"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("master-")
        })
        .count();
    assert_eq!(masters, 1);
    assert!(store.verify().unwrap().failed.is_empty());
}

/// Issue 10, section 3: a master key is removed only when no key file names it; a key file that
/// cannot be read keeps every master.
#[test]
fn rotation_never_removes_a_master_key_a_key_file_may_need() {
    let (dir, store) = store();
    let ids: Vec<String> = (0..4)
        .map(|i| store.put_bytes(&bytes(100, i)).unwrap())
        .collect();
    let old = store.master_id();
    // One key file does not parse: its master cannot be known.
    let bad = store.key_path(&ids[2]);
    let good = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, b"{not json").unwrap();
    let r = store.rotate().unwrap();
    assert_eq!(r.unreadable.len(), 1, "{r:?}");
    assert!(r.retired.is_empty(), "{r:?}");
    let keys = dir.path().join("data/keys");
    assert!(keys.join(format!("master-{old}.key")).exists());
    // Repaired, the next rotation re-wraps it and only then retires the old masters.
    std::fs::write(&bad, &good).unwrap();
    let r = store.rotate().unwrap();
    assert!(r.unreadable.is_empty());
    assert!(r.retired.contains(&old), "{r:?}");
    let store = Store::open(&dir.path().join("data")).unwrap();
    for id in &ids {
        store.get(id).unwrap();
    }
}

/// Issue 10, section 3: a crash leaves partial uploads and temporaries; a writer sweeps them
/// when it opens the directory, and a reader never sees them.
#[test]
fn temporaries_a_crash_left_are_swept_when_a_writer_opens() {
    let (dir, store) = store();
    let id = store.put_bytes(b"kept").unwrap();
    let root = dir.path().join("data");
    drop(store);
    let leftovers = [
        root.join("objects/tmp/0123456789abcdef01234567"),
        root.join(format!("objects/{}/.{id}.key.1234-0-00ff.tmp", &id[..2])),
        root.join("keys/.current.99-1-abcd.tmp"),
        // A key file whose object never made it into place.
        root.join(format!("objects/{}/{}.key", &id[..2], "ab".repeat(32))),
    ];
    for f in &leftovers {
        std::fs::write(f, b"partial").unwrap();
    }
    let store = Store::open_exclusive(&root, "test").unwrap();
    for f in &leftovers {
        assert!(!f.exists(), "{} left", f.display());
    }
    assert_eq!(store.get(&id).unwrap(), b"kept");
}

/// Writes need the directory's lock; a reader opened beside a writer reads.
#[test]
fn a_read_only_store_refuses_writes_and_a_second_writer_is_refused() {
    let (dir, writer) = store();
    let root = dir.path().join("data");
    let reader = Store::open(&root).unwrap();
    assert!(matches!(
        reader.put_bytes(b"x"),
        Err(StoreError::ReadOnly(_))
    ));
    assert!(matches!(reader.rotate(), Err(StoreError::ReadOnly(_))));
    let e = Store::open_exclusive(&root, "second").unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    let id = writer.put_bytes(b"shared").unwrap();
    writer.rotate().unwrap();
    // The reader learns the new master from disk.
    assert_eq!(reader.get(&id).unwrap(), b"shared");
}

/// Copies the master keys of the store under `from` into a new store under `to` (a replica's
/// copy of one data directory).
fn replica_of(from: &Path, to: &Path) -> Store {
    std::fs::create_dir_all(to.join("keys")).unwrap();
    for entry in std::fs::read_dir(from.join("keys")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("keys").join(entry.file_name())).unwrap();
    }
    for dir in ["objects", "objects/tmp"] {
        std::fs::create_dir_all(to.join(dir)).unwrap();
    }
    Store::open_exclusive(to, "a test").unwrap()
}

#[test]
fn a_sealed_object_moves_to_a_store_of_the_same_keys_and_nowhere_else() {
    let (dir, a) = store();
    let data = bytes(CHUNK + 17, 5);
    let id = a.put_bytes(&data).unwrap();
    let sealed = a.sealed(&id, 4 * CHUNK as u64).unwrap();
    assert!(
        !sealed
            .chunks
            .windows(64)
            .any(|w| data.windows(64).next() == Some(w)),
        "still encrypted"
    );
    assert!(matches!(
        a.sealed(&id, CHUNK as u64),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        a.sealed(&"0".repeat(64), u64::MAX),
        Err(StoreError::NotFound(_))
    ));

    let b = replica_of(a.root(), &dir.path().join("b"));
    b.put_sealed(&id, &sealed).unwrap();
    assert!(b.get(&id).unwrap() == data);
    b.put_sealed(&id, &sealed).unwrap();

    // A flipped bit, another object's id, or a store of other keys: refused, nothing kept.
    let c = replica_of(a.root(), &dir.path().join("c"));
    let mut flipped = sealed.clone();
    flipped.chunks[100] ^= 1;
    assert!(c.put_sealed(&id, &flipped).is_err());
    let other = a.put_bytes(b"another object").unwrap();
    assert!(c.put_sealed(&other, &sealed).is_err());
    let (_e, elsewhere) = store();
    assert!(elsewhere.put_sealed(&id, &sealed).is_err());
    for s in [&c, &elsewhere] {
        assert!(matches!(s.get(&id), Err(StoreError::NotFound(_))));
        assert!(matches!(s.get(&other), Err(StoreError::NotFound(_))));
    }
}

/// Content-addressed objects are shared by whoever stores the same bytes: one owner letting an
/// object go while another has just stored the same content (and not yet recorded it) lost the
/// other's object. A pinned object, or one something still names, is never removed; a removal
/// racing puts of the same content never loses a recorded object.
#[test]
fn an_object_is_removed_only_when_unpinned_and_unnamed_whatever_puts_race_it() {
    let (_d, store) = store();
    let data = bytes(3000, 77);
    let pinned = store.put_pinned(&data[..]).unwrap();
    let id = pinned.id().to_string();
    assert!(pinned.created());
    assert!(
        !store.put_pinned(&data[..]).unwrap().created(),
        "found stored"
    );
    let unused = || Ok::<bool, String>(false);
    assert!(!store.remove_unused(&id, unused).unwrap(), "pinned: kept");
    assert!(store.deferred().is_empty(), "still pinned");
    drop(pinned);
    assert_eq!(
        store.deferred(),
        std::slice::from_ref(&id),
        "to be asked about again"
    );
    assert!(store.deferred().is_empty(), "once");
    assert!(
        !store
            .remove_unused(&id, || Ok::<bool, String>(true))
            .unwrap()
    );
    assert!(store.remove_unused(&id, || Err("no answer")).is_err());
    assert_eq!(store.get(&id).unwrap(), data);
    assert!(store.remove_unused(&id, unused).unwrap());
    assert!(matches!(store.get(&id), Err(StoreError::NotFound(_))));
    assert!(store.list().unwrap().is_empty(), "object and key file gone");
    assert_eq!(store.put_bytes(&data).unwrap(), id, "stored again afresh");
    assert_eq!(store.get(&id).unwrap(), data);

    // Writers store the same few contents and record them while a remover lets records go:
    // every object recorded at the end reads.
    let records = Mutex::new(std::collections::HashMap::<String, usize>::new());
    let contents: Vec<Vec<u8>> = (0..3)
        .map(|i| bytes(CHUNK + 10 * i, 900 + i as u64))
        .collect();
    std::thread::scope(|s| {
        for t in 0..3 {
            let (store, records, contents) = (&store, &records, &contents);
            s.spawn(move || {
                for i in 0..40 {
                    let pinned = store.put_pinned(&contents[(t + i) % 3][..]).unwrap();
                    *records
                        .lock()
                        .unwrap()
                        .entry(pinned.id().to_string())
                        .or_default() += 1;
                    drop(pinned);
                    // Let the record go again, as a job's older checkpoint goes.
                    let id = store.put_bytes(&contents[(t + i + 1) % 3]).unwrap();
                    let dropped = {
                        let mut r = records.lock().unwrap();
                        match r.get_mut(&id) {
                            Some(n) if *n > 1 => {
                                *n -= 1;
                                false
                            }
                            Some(_) => r.remove(&id).is_some(),
                            None => false,
                        }
                    };
                    if dropped {
                        store
                            .remove_unused(&id, || {
                                Ok::<bool, String>(records.lock().unwrap().contains_key(&id))
                            })
                            .unwrap();
                    }
                }
            });
        }
    });
    for id in records.lock().unwrap().keys() {
        store.get(id).expect("every recorded object reads");
    }
}

/// A sealer of another key than [`key_file`]'s first.
fn sealer_of(apart: &tempfile::TempDir, root: &Path) -> sealing::Sealer {
    sealing::Sealer::from_file(&key_file(apart.path(), "another", 9), root).unwrap()
}

/// A key file for sealing, 0600, outside any data directory.
fn key_file(dir: &Path, name: &str, seed: u64) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes(32, seed)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Found by reading the data directory as a thief would: the master key sat beside the objects
/// it unwraps (`keys/master-*.key`, 32 bytes as they are), so a copied disk, a backup or a
/// replica's directory gave up every object. Sealed under a key file kept apart, a master key
/// opens only with that file: without it, or with another, the directory does not open; an
/// unsealed key beside sealed ones (planted, to have new objects wrapped under a key its planter
/// knows) is refused; what was stored before sealing still reads after.
#[test]
fn master_keys_sealed_under_a_key_file_open_only_with_it() {
    let (dir, store) = store();
    let root = store.root().to_path_buf();
    let data = bytes(3 * CHUNK / 2, 7);
    let id = store.put_bytes(&data).unwrap();
    drop(store);
    let apart = tempfile::tempdir().unwrap();
    let sealer = sealing::Sealer::from_file(&key_file(apart.path(), "kek", 1), &root).unwrap();
    let rng = SystemRandom::new();
    assert_eq!(
        seal_unsealed(&root, &sealer, &rng).unwrap(),
        2,
        "master and host keys"
    );
    assert_eq!(seal_unsealed(&root, &sealer, &rng).unwrap(), 0, "once");
    let master = std::fs::read_dir(root.join("keys"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("master-"))
        .unwrap();
    let file = std::fs::read(&master).unwrap();
    assert_eq!(file.len(), sealing::SEALED_LEN);

    // With its key file: every object reads, and a new master key is written sealed.
    let (keys, current) = read_masters_with(&root, Some(&sealer), false).unwrap();
    let sealed = Store::new(&root, keys, current, None);
    assert!(sealed.get(&id).unwrap() == data);
    let fresh = new_master_with(&root, &rng, Some(&sealer)).unwrap();
    let fresh_path = root.join(format!("keys/master-{}.key", fresh.id));
    assert!(sealing::is_sealed(&std::fs::read(&fresh_path).unwrap()));
    std::fs::remove_file(&fresh_path).unwrap();

    // The audit signing key too: sealed, it opens only with the key file.
    let host = host_key_with(&root, Some(&sealer)).unwrap();
    assert!(host_key_with(&root, None).is_err());
    assert!(host_key_with(&root, Some(&sealer_of(&apart, &root))).is_err());
    let sealed_host = std::fs::read(root.join(HOST_KEY)).unwrap();
    new_host_key(&root, &rng, None).unwrap();
    let refused = host_key_with(&root, Some(&sealer))
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("unsealed"),
        "a planted signing key: {refused}"
    );
    std::fs::write(root.join(HOST_KEY), &sealed_host).unwrap();
    use ring::signature::KeyPair;
    let again = host_key_with(&root, Some(&sealer)).unwrap();
    assert_eq!(again.public_key().as_ref(), host.public_key().as_ref());

    // Without it, with another, or with the file altered: the directory does not open.
    let error = |r: Result<(Vec<MasterKey>, usize), StoreError>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened"),
    };
    assert!(error(read_masters_with(&root, None, false)).contains("GANTRY_KEY_FILE"));
    let other = sealing::Sealer::from_file(&key_file(apart.path(), "other", 2), &root).unwrap();
    assert!(error(read_masters_with(&root, Some(&other), false)).contains("does not open"));
    let mut altered = file.clone();
    altered[20] ^= 1;
    std::fs::write(&master, &altered).unwrap();
    assert!(error(read_masters_with(&root, Some(&sealer), false)).contains("does not open"));
    std::fs::write(&master, &file[..20]).unwrap();
    assert!(error(read_masters_with(&root, Some(&sealer), false)).contains("cut short"));
    std::fs::write(&master, &file).unwrap();
    // A sealed key renamed to another id does not open (its id is bound in).
    let renamed = root.join("keys/master-0000000000000000.key");
    std::fs::write(&renamed, &file).unwrap();
    assert!(error(read_masters_with(&root, Some(&sealer), false)).contains("does not open"));
    std::fs::remove_file(&renamed).unwrap();

    // An unsealed key planted beside the sealed one is refused.
    let planted = new_master_with(&root, &rng, None).unwrap();
    assert!(error(read_masters_with(&root, Some(&sealer), false)).contains("unsealed"));
    std::fs::remove_file(root.join(format!("keys/master-{}.key", planted.id))).unwrap();
    assert!(read_masters_with(&root, Some(&sealer), false).is_ok());

    // The key file itself: only its owner's, 32 bytes or 64 hex digits, kept apart.
    use std::os::unix::fs::PermissionsExt;
    let loose = key_file(apart.path(), "loose", 3);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = |path: &Path| match sealing::Sealer::from_file(path, &root) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} taken", path.display()),
    };
    assert!(refused(&loose).contains("read by others"));
    let inside = key_file(&root, "kek", 4);
    assert!(refused(&inside).contains("inside the data directory"));
    let short = key_file(apart.path(), "short", 5);
    std::fs::write(&short, b"0123").unwrap();
    assert!(refused(&short).contains("32 bytes or 64 hex digits"));
    let hex = key_file(apart.path(), "hex", 6);
    std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
    assert!(sealing::Sealer::from_file(&hex, &root).is_ok());
    drop(dir);
}
