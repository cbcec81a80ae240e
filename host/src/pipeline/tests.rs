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
