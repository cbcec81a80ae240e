//! The host never trusts a strategy's answer: every placement is checked, and one bad placement
//! rejects the whole answer.

pub use gantry_model::validate;

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, JobSpec};
    use crate::scheduling::model::{Jobs, Placement, Snapshot};
    use crate::scheduling::{ClusterState, snapshot};

    fn setup() -> (Snapshot, Jobs) {
        let mut cluster = Cluster::uniform(1, 2, 4, 2);
        cluster.tenants[1].quota_gpus = Some(2);
        cluster.gpus[7].gpu.healthy = false;
        cluster.gpus[6].gpu.memory_free_mib = 1000;
        let mut state = ClusterState::new(cluster);
        for (id, tenant, gpus, gang) in [("a", 0, 2, true), ("b", 1, 3, false)] {
            state.enqueue(
                JobSpec::new(id, format!("tenant-{tenant}"), gpus, 2000, 10.0).with_gang(gang),
                tenant,
            );
        }
        state.holder[0] = Some(99); // held by a job outside the queue
        snapshot::build(&state, 0.0)
    }

    fn check(placements: &[(u32, &[u32])]) -> Result<(), String> {
        let (s, q) = setup();
        let p: Vec<Placement> = placements
            .iter()
            .map(|(job, gpus)| Placement {
                job: *job,
                gpus: gpus.to_vec(),
            })
            .collect();
        validate(&s, &q, &p)
    }

    #[test]
    fn accepts_a_valid_answer() {
        check(&[(0, &[1, 2]), (1, &[4, 5])]).unwrap();
        check(&[]).unwrap();
    }

    #[test]
    fn rejects_each_broken_rule() {
        type Answer<'a> = &'a [(u32, &'a [u32])];
        let cases: &[(Answer, &str)] = &[
            (&[(5, &[1])], "not in the queue"),
            (&[(0, &[1, 2]), (0, &[3, 4])], "placed twice"),
            (&[(0, &[1])], "gang job 0 needs all 2"),
            (&[(1, &[1, 2, 3, 4])], "asked for 3"),
            (&[(0, &[1, 42])], "does not exist"),
            (&[(0, &[1, 7])], "unhealthy"),
            (&[(0, &[0, 1])], "already allocated"),
            (&[(0, &[1, 2]), (1, &[2])], "given twice"),
            (&[(0, &[1, 6])], "1000 MiB free"),
            (&[(1, &[3, 4, 5])], "over its quota of 2"),
            (&[(1, &[])], "gets no GPUs"),
        ];
        for (placements, want) in cases {
            let err = check(placements).unwrap_err();
            assert!(err.contains(want), "{placements:?}: {err}");
        }
    }
}
