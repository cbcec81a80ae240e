use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("data")).unwrap();
    (dir, store)
}

/// Bytes that compress poorly and differ by seed.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
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
    let (dir, mut store) = store();
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
