//! Runs of GPUs in the world's layout: one count per record, and all records' GPU indices
//! concatenated (`running.gpu-count` with `running.gpus`, `placements.gpu-count` with
//! `placements.gpus`). Two lists of numbers cross the boundary as two copies, where a list of
//! lists would cross list by list.

/// A record's counts that do not add up to its concatenated GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnevenRuns {
    /// The record, as the WIT names it (`running`, `placements`).
    pub record: &'static str,
    /// What the counts sum to (in `u64`: a sum of `u32` counts may overflow `u32`).
    pub total: u64,
    /// How many GPUs there are.
    pub entries: usize,
}

impl std::fmt::Display for UnevenRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            record,
            total,
            entries,
        } = self;
        write!(
            f,
            "{record}.gpu-count sums to {total} but {record}.gpus has {entries} entries"
        )
    }
}

impl std::error::Error for UnevenRuns {}

/// The runs of `gpus` that `counts` describe, in order; refused when the counts do not add up
/// to exactly `gpus.len()`.
pub fn split<'a>(
    record: &'static str,
    counts: &'a [u32],
    gpus: &'a [u32],
) -> Result<impl ExactSizeIterator<Item = &'a [u32]> + 'a, UnevenRuns> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total != gpus.len() as u64 {
        return Err(UnevenRuns {
            record,
            total,
            entries: gpus.len(),
        });
    }
    let mut rest = gpus;
    Ok(counts.iter().map(move |&count| {
        let (run, tail) = rest.split_at(count as usize);
        rest = tail;
        run
    }))
}

/// The counts and the concatenation of `runs`: the inverse of [`split`].
pub fn flatten<'a>(runs: impl Iterator<Item = &'a [u32]> + Clone) -> (Vec<u32>, Vec<u32>) {
    let (records, total) = runs
        .clone()
        .fold((0, 0), |(n, total), run| (n + 1, total + run.len()));
    let mut counts = Vec::with_capacity(records);
    let mut gpus = Vec::with_capacity(total);
    for run in runs {
        counts.push(run.len() as u32);
        gpus.extend_from_slice(run);
    }
    (counts, gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_gives_the_runs_in_order_and_flatten_undoes_it() {
        let runs: Vec<&[u32]> = split("placements", &[2, 0, 3], &[10, 11, 20, 21, 22])
            .unwrap()
            .collect();
        assert_eq!(runs, [&[10, 11][..], &[], &[20, 21, 22]]);
        let (counts, gpus) = flatten(runs.iter().copied());
        assert_eq!(counts, [2, 0, 3]);
        assert_eq!(gpus, [10, 11, 20, 21, 22]);
    }

    #[test]
    fn counts_that_miss_the_gpus_are_refused_without_wrapping() {
        let e = split("running", &[3], &[5, 6]).err().unwrap();
        assert_eq!(
            e.to_string(),
            "running.gpu-count sums to 3 but running.gpus has 2 entries"
        );
        // Counts whose sum overflows u32 must not wrap around to a plausible total.
        let e = split("placements", &[u32::MAX, 3], &[5, 6]).err().unwrap();
        assert_eq!(e.total, 4_294_967_298);
    }
}
