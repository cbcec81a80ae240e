use gantry_plugin_sdk::fit::{FreeIndex, priority_order};
use gantry_plugin_sdk::sched::{ConfigEntry, Jobs, Placement, PluginError, Snapshot, Strategy};

pub struct FirstFit;

impl Strategy for FirstFit {
    fn configure(_config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Ok(())
    }

    fn schedule(snapshot: Snapshot, queue: Jobs) -> Result<Vec<Placement>, PluginError> {
        let mut free = FreeIndex::new(&snapshot);
        let mut out = Vec::new();
        for job in priority_order(&queue) {
            let j = queue.row(job as usize); // or read one column: queue.gpus[job as usize]
            if j.gpus > free.quota_left(j.tenant) {
                continue;
            }
            let gpus = match free.best_fit_node(j.gpus, j.memory_per_gpu_mib) {
                Some(node) => free.choose_on_node(node, j.gpus, j.memory_per_gpu_mib),
                // Larger than any node's free GPUs: whole nodes, then the best fit for the rest.
                None => match free.choose_across_nodes(j.gpus, j.memory_per_gpu_mib, None) {
                    Some(gpus) => gpus,
                    None => continue, // too few free GPUs now
                },
            };
            free.take(j.tenant, &gpus);
            out.push(Placement { job, gpus });
        }
        Ok(out)
    }
}

// Exports the strategy as the component's `gantry:scheduler/strategy` (on wasm targets only).
gantry_plugin_sdk::export_strategy!(FirstFit);
