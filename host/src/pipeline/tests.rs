use super::*;
use crate::plugin::{ArtifactCache, base_linker};
use crate::preprocess::line_batches;

fn plugin() -> PreprocessPlugin {
    let engine = crate::engine::build().unwrap();
    let linker = base_linker(&engine).unwrap();
    let cache = ArtifactCache::new(&engine, None);
    PreprocessPlugin::builtin(&engine, &linker, &cache, "standardize").unwrap()
}

fn csv(rows: usize, columns: usize) -> Vec<u8> {
    crate::pipeline::synthetic_csv(rows, columns, 3)
}

#[test]
fn a_dataset_far_larger_than_the_bound_streams_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("data")).unwrap();
    let text = csv(30_000, 8);
    let id = store.put_bytes(&text).unwrap();
    let plugin = plugin();
    let config = PipelineConfig {
        batch_records: 250,
        workers: 2,
        depth: 2,
    };
    let mut got = Vec::new();
    let stats = run_object(&store, &id, &plugin, config, &mut |t| {
        got.extend(t.data);
        Ok(())
    })
    .unwrap();
    assert_eq!((stats.records, stats.batches), (30_000, 120));
    assert!(stats.two_passes);
    assert_eq!(stats.bytes, text.len());
    // Alive at once: at most `depth` per channel plus one per thread in hand, never the
    // dataset's 120 batches.
    let bound = config.workers * (config.depth + 2) + config.depth + 1;
    assert!(
        stats.max_in_flight <= bound,
        "{} > {bound}",
        stats.max_in_flight
    );

    // The same batches through one worker, one after the other: identical values.
    let mut w = plugin.worker_blocking().unwrap();
    let batches = line_batches(&text, 250);
    let mut totals = Vec::new();
    for b in &batches {
        add_totals("standardize", &mut totals, &w.observe_blocking(b).unwrap()).unwrap();
    }
    w.prepare_blocking(&totals).unwrap();
    let want: Vec<f32> = batches
        .iter()
        .flat_map(|b| w.process_blocking(b).unwrap().data)
        .collect();
    assert!(
        got == want,
        "pipeline output differs from sequential processing"
    );
}

#[test]
fn a_bad_record_names_its_batch_and_a_corrupt_object_stops_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("data")).unwrap();
    let mut text = csv(1000, 3);
    // Record 777 (1-based) gets a bad second field.
    let line_start = text
        .split(|&b| b == b'\n')
        .take(776)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let comma = line_start + text[line_start..].iter().position(|&b| b == b',').unwrap();
    text.insert(comma + 1, b'x');
    let id = store.put_bytes(&text).unwrap();
    let plugin = plugin();
    let config = PipelineConfig {
        batch_records: 100,
        workers: 2,
        depth: 1,
    };
    let e = run_object(&store, &id, &plugin, config, &mut |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("records 701-800:") && e.contains("record 77: field 2: `x"),
        "{e}"
    );

    // A flipped bit in the stored object: the stream fails authenticating, nothing of the bad
    // chunk reaches the plugin.
    let big = csv(40_000, 8);
    let id = store.put_bytes(&big).unwrap();
    let path = store.root().join("objects").join(&id[..2]).join(&id);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = run_object(&store, &id, &plugin, config, &mut |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not authenticate"), "{e}");
}

/// Runs the pipeline over the bytes `make()` streams, returning its stats or error text.
fn run_stream(
    make: impl Fn() -> Box<dyn Read + Send> + Sync,
    batch_records: usize,
) -> Result<PipelineStats, String> {
    let config = PipelineConfig {
        batch_records,
        workers: 2,
        depth: 1,
    };
    let open = || -> Result<Box<dyn Read + Send>, StoreError> { Ok(make()) };
    run(&open, &plugin(), config, &mut |_| Ok(())).map_err(|e| e.to_string())
}

/// Found by a hostile dataset: a record without a newline was read whole into the host's
/// memory (a 400 MB line took 838 MB; a 20 GB object, or a stream that never ends, took the
/// host down), and a first record over 64 KiB reached the plugin cut short, which then
/// reported an empty field. Records are now read to a bound and refused beyond it by number.
#[test]
fn a_record_longer_than_the_limit_is_refused_by_number_without_being_read_whole() {
    let endless = |head: &'static [u8]| {
        move || -> Box<dyn Read + Send> {
            Box::new(head.chain(std::io::repeat(b'7').take(3 * MAX_RECORD_BYTES as u64)))
        }
    };
    for (head, number) in [(&b""[..], 1), (&b"1,2\n3,4\n"[..], 3)] {
        let e = run_stream(endless(head), 4096).unwrap_err();
        assert!(
            e.contains(&format!(
                "record {number} is longer than {MAX_RECORD_BYTES} bytes"
            )),
            "{e}"
        );
    }
    // A record of exactly the limit is read (and refused by the plugin for its own reasons).
    let exact = || -> Box<dyn Read + Send> {
        Box::new(
            std::io::repeat(b'7')
                .take(MAX_RECORD_BYTES as u64)
                .chain(&b"\n"[..]),
        )
    };
    let e = run_stream(exact, 4096).unwrap_err();
    assert!(!e.contains("is longer than"), "{e}");
}

/// Batches stop growing at `MAX_BATCH_BYTES`, whatever their record count: 40 records of
/// just over 512 KiB make batches of 31 and 9, not one of 40 (20 MiB).
#[test]
fn batches_are_cut_at_the_byte_bound_before_the_record_count() {
    let record: Vec<u8> = b"1.5,"
        .iter()
        .copied()
        .cycle()
        .take(512 << 10)
        .chain(*b"9\n")
        .collect();
    let text: Vec<u8> = record.repeat(40);
    let stats = run_stream(|| Box::new(std::io::Cursor::new(text.clone())), 4096).unwrap();
    assert_eq!((stats.records, stats.batches), (40, 2));
    assert_eq!(stats.bytes, text.len());
}
