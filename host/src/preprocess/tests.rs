use super::*;

fn shipped(name: &str) -> PreprocessPlugin {
    let engine = crate::engine::build().unwrap();
    let linker = plugin::base_linker(&engine).unwrap();
    let cache = ArtifactCache::new(&engine, None);
    PreprocessPlugin::builtin(&engine, &linker, &cache, name).unwrap()
}

fn plugin() -> PreprocessPlugin {
    shipped("standardize")
}

#[test]
fn onehot_and_tokenizer_in_the_sandbox() {
    let mut onehot = shipped("onehot");
    onehot.set_config("categories", "1=cat|dog");
    let mut w = onehot.worker_blocking().unwrap();
    // One pass only: observe learns nothing.
    let batch = &line_batches(b"0.5,dog\n2,cat\n", 10)[0];
    assert!(w.observe_blocking(batch).unwrap().is_empty());
    let t = w.process_blocking(batch).unwrap();
    assert_eq!(
        (t.shape.as_slice(), t.data.as_slice()),
        (&[2, 3][..], &[0.5, 0.0, 1.0, 2.0, 1.0, 0.0][..])
    );
    let e = w
        .process_blocking(&line_batches(b"1,cow\n", 10)[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`cow` is not one of its 2 categories"), "{e}");
    // A bad override is refused when a worker is configured, naming the key.
    onehot.set_config("unknown", "maybe");
    let e = onehot.worker_blocking().err().unwrap().to_string();
    assert!(e.contains("`unknown`"), "{e}");

    let mut tok = shipped("tokenizer");
    tok.set_config("length", "4");
    let mut w = tok.worker_blocking().unwrap();
    let t = w
        .process_blocking(&line_batches(b"ab\nhello\n", 10)[0])
        .unwrap();
    assert_eq!(t.shape, [2, 4]);
    assert_eq!(t.data, [1.0, 99.0, 100.0, 0.0, 1.0, 106.0, 103.0, 110.0]);
}

#[test]
fn line_batches_pack_records() {
    let b = line_batches(b"a,b\nccc\n\nd\n", 2);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].data, b"a,bccc");
    assert_eq!(b[0].offsets, [0, 3, 6]);
    assert_eq!(b[1].offsets, [0, 0, 1]);
    assert!(line_batches(b"", 4).is_empty());
}

#[test]
fn standardize_in_the_sandbox_matches_by_hand() {
    let plugin = plugin();
    let mut w = plugin.worker_blocking().unwrap();
    let batches = line_batches(b"1,10\n2,20\n3,30\n", 2);
    let mut totals = Vec::new();
    for b in &batches {
        add_totals("standardize", &mut totals, &w.observe_blocking(b).unwrap()).unwrap();
    }
    assert_eq!(totals, [3.0, 6.0, 60.0, 14.0, 1400.0]);
    w.prepare_blocking(&totals).unwrap();
    let t = w.process_blocking(&batches[0]).unwrap();
    assert_eq!(t.shape, [2, 2]);
    let s = 1.5f32.sqrt();
    for (g, want) in t.data.iter().zip([-s, -s, 0.0, 0.0]) {
        assert!((g - want).abs() < 1e-5, "{:?}", t.data);
    }
    // A bad record is the guest's error, named; the worker stays usable.
    let bad = line_batches(b"1,2\n3,oops\n", 10);
    let e = w.process_blocking(&bad[0]).unwrap_err().to_string();
    assert!(
        e.contains("record 2: field 2: `oops` is not a finite number"),
        "{e}"
    );
    assert!(w.process_blocking(&batches[1]).is_ok());
    // A malformed batch (offsets past the data) is refused by the SDK, not read out of bounds.
    let broken = RecordBatch {
        data: b"1,2".to_vec(),
        offsets: vec![0, 9],
    };
    let e = w.process_blocking(&broken).unwrap_err().to_string();
    assert!(e.contains("malformed batch"), "{e}");
}
