//! The host's guard against starvation by backfill, applied to every strategy's answer (the
//! plugins' and the native fallback's alike).
//!
//! A strategy that places whatever fits now lets a stream of small jobs keep a large gang
//! waiting for ever: GPUs freed one at a time are taken again before enough are free together.
//! Once a job has waited [`reserve_after_s`](guard), the guard holds GPUs for it (EASY
//! backfill): its *shadow time* is the earliest moment, by the running allocations' expected
//! ends, at which enough GPUs it can use are free; a placement of a job after it (in
//! [`priority_order`]) stands only when that job is expected to end by then, or when it takes
//! only GPUs still spare at the shadow time (`extra`). The rest wait for a later cycle.
//!
//! What was held back leaves GPUs free; the strategy is asked once more, on the jobs after the
//! waiting one that are expected to end by the shadow time ([`Backfill`]).
//!
//! The guard only holds back; it never places a job itself. When the waiting job fits in what is
//! free now, the strategy placed something else by its own order (fair share's, say): that stands.
//! Estimates are the jobs' own; one that runs past its estimate delays the shadow time, and the
//! next cycle computes it again.

use crate::fit::priority_order;
use crate::{Jobs, Placement, Snapshot};

/// What the guard did in one cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Queue position of the job GPUs are held for.
    pub job: u32,
    /// When enough GPUs for it are expected to be free, on the host's clock.
    pub shadow_s: f64,
    /// Queue positions of the jobs whose placements were held back this cycle.
    pub held_back: Vec<u32>,
}

/// `placements` (a strategy's valid answer on `snapshot` and `queue`), less those that would
/// delay the first job in priority order that has waited `reserve_after_s` seconds and could
/// run but is not placed; and the reservation made for it, if any. An infinite or NaN
/// `reserve_after_s` holds nothing back.
pub fn guard(
    snapshot: &Snapshot,
    queue: &Jobs,
    placements: Vec<Placement>,
    reserve_after_s: f64,
) -> (Vec<Placement>, Option<Reservation>) {
    if placements.is_empty() || !reserve_after_s.is_finite() {
        return (placements, None);
    }
    let order = priority_order(queue);
    let mut rank = vec![u32::MAX; queue.len()];
    for (r, &position) in order.iter().enumerate() {
        rank[position as usize] = r as u32;
    }
    let mut placed = vec![false; queue.len()];
    for p in &placements {
        if let Some(placed) = placed.get_mut(p.job as usize) {
            *placed = true;
        }
    }
    let Some((job, need)) = first_waiting(snapshot, queue, &order, &placements, reserve_after_s)
    else {
        return (placements, None);
    };
    let job_rank = rank[job as usize];
    let behind = |p: &Placement| rank.get(p.job as usize).is_some_and(|&r| r > job_rank);
    let memory_mib = queue.memory_per_gpu_mib[job as usize];
    let ahead = placements.iter().filter(|p| !behind(p));
    let Some(mut hold) = Hold::new(snapshot, queue, ahead, need, memory_mib) else {
        return (placements, None);
    };
    let now_s = snapshot.now_s;
    let mut held_back = Vec::new();
    let kept = placements
        .into_iter()
        .filter(|p| {
            // A NaN estimate is never in time.
            let est_s = queue.est_runtime_s[p.job as usize];
            if !behind(p) || now_s + est_s <= hold.shadow_s {
                return true;
            }
            let takes = p.gpus.iter().filter(|&&g| hold.usable(snapshot, g)).count() as u32;
            if takes <= hold.extra {
                hold.extra -= takes;
                return true;
            }
            held_back.push(p.job);
            false
        })
        .collect();
    let reservation = Reservation {
        job,
        shadow_s: hold.shadow_s,
        held_back,
    };
    (kept, Some(reservation))
}

/// The second chance of a cycle whose guard held placements back: the GPUs those would have
/// taken stay free, and holding them idle until the next cycle wasted a tenth of the cluster
/// in an overloaded simulation. The jobs after the waiting one that are expected to end by its
/// shadow time, not placed yet, offered the GPUs left free beside what stands: whatever a
/// strategy places of these cannot delay the waiting job.
#[derive(Debug, Clone)]
pub struct Backfill {
    /// The cycle's snapshot with the placements that stand as running allocations.
    pub snapshot: Snapshot,
    /// The jobs offered, in queue order.
    pub queue: Jobs,
    /// Each offered job's position in the cycle's queue.
    positions: Vec<u32>,
}

impl Backfill {
    /// The backfill after `kept`, what stands of an answer on `snapshot` and `queue` once
    /// `reservation` held some back; `None` when no job could use it.
    pub fn after(
        snapshot: &Snapshot,
        queue: &Jobs,
        kept: &[Placement],
        reservation: &Reservation,
    ) -> Option<Backfill> {
        let now_s = snapshot.now_s;
        let order = priority_order(queue);
        let mut offered = vec![false; queue.len()];
        let mut behind = false;
        for &position in &order {
            if position == reservation.job {
                behind = true;
            } else if behind {
                let est_s = queue.est_runtime_s[position as usize];
                offered[position as usize] = est_s >= 0.0 && now_s + est_s <= reservation.shadow_s;
            }
        }
        for p in kept {
            if let Some(o) = offered.get_mut(p.job as usize) {
                *o = false;
            }
        }
        let positions: Vec<u32> = (0..queue.len() as u32)
            .filter(|&p| offered[p as usize])
            .collect();
        if positions.is_empty() {
            return None;
        }
        let mut next = snapshot.clone();
        for p in kept {
            let job = queue.row(p.job as usize);
            for &g in &p.gpus {
                next.gpus.busy[g as usize] = 1;
            }
            let n = p.gpus.len() as u32;
            if let Some(t) = next.tenants.get_mut(job.tenant as usize) {
                t.used_gpus = t.used_gpus.saturating_add(n);
                t.used_memory_mib = (t.used_memory_mib)
                    .saturating_add(u64::from(n) * u64::from(job.memory_per_gpu_mib));
            }
            next.running.push(crate::Allocation {
                tenant: job.tenant,
                priority: job.priority,
                gpus: p.gpus.clone(),
                start_s: now_s,
                expected_end_s: now_s + job.est_runtime_s,
            });
        }
        Some(Backfill {
            snapshot: next,
            queue: positions.iter().map(|&p| queue.row(p as usize)).collect(),
            positions,
        })
    }

    /// A strategy's answer on this backfill, checked against it and numbered by the cycle's
    /// queue.
    pub fn placements(&self, answer: Vec<Placement>) -> Result<Vec<Placement>, String> {
        crate::validate(&self.snapshot, &self.queue, &answer)?;
        Ok(answer
            .into_iter()
            .map(|p| Placement {
                job: self.positions[p.job as usize],
                gpus: p.gpus,
            })
            .collect())
    }
}

/// The first job in `order` that `placements` does not place, that has waited
/// `reserve_after_s`, whose tenant's quota leaves it room beside the jobs placed ahead of it,
/// and that the cluster's healthy GPUs could hold; with the GPUs to hold for it (all of a gang;
/// of a job taken in parts, as many as its quota and the cluster allow).
fn first_waiting(
    snapshot: &Snapshot,
    queue: &Jobs,
    order: &[u32],
    placements: &[Placement],
    reserve_after_s: f64,
) -> Option<(u32, u32)> {
    let mut given = vec![0u32; queue.len()];
    for p in placements {
        if let Some(given) = given.get_mut(p.job as usize) {
            *given += p.gpus.len() as u32;
        }
    }
    // Healthy GPUs' memory, ascending: how many could ever hold a job is one search.
    let nodes = snapshot.nodes.len();
    let gpus = &snapshot.gpus;
    let mut memory: Vec<u32> = (0..gpus.len())
        .filter(|&g| gpus.healthy[g] != 0 && (gpus.node[g] as usize) < nodes)
        .map(|g| gpus.memory_free_mib[g])
        .collect();
    memory.sort_unstable();
    let mut taken = vec![0u64; snapshot.tenants.len()];
    for &position in order {
        let job = queue.row(position as usize);
        let t = job.tenant as usize;
        if given[position as usize] > 0 {
            if let Some(taken) = taken.get_mut(t) {
                *taken += u64::from(given[position as usize]);
            }
            continue;
        }
        // A NaN submission time has not waited.
        let waited = snapshot.now_s - job.submit_s >= reserve_after_s;
        if job.gpus == 0 || !waited {
            continue;
        }
        let Some(tenant) = snapshot.tenants.get(t) else {
            continue;
        };
        let room = tenant.quota_gpus.map_or(u64::MAX, |q| {
            u64::from(q).saturating_sub(u64::from(tenant.used_gpus) + taken[t])
        });
        let capacity =
            (memory.len() - memory.partition_point(|&m| m < job.memory_per_gpu_mib)) as u64;
        let need = if job.gang {
            u64::from(job.gpus)
        } else {
            u64::from(job.gpus).min(room).min(capacity)
        };
        if need > 0 && need <= room && need <= capacity {
            return Some((position, need as u32));
        }
    }
    None
}

/// GPUs held for one job: when enough are expected free, and how many beyond its need.
struct Hold {
    memory_mib: u32,
    shadow_s: f64,
    extra: u32,
}

impl Hold {
    /// The hold for a job needing `need` GPUs of `memory_mib` free each, beside the placements
    /// `ahead` of it this cycle (their GPUs are taken now and come back at their expected end).
    /// `None` when it fits in what is free now (the strategy chose otherwise) or the expected
    /// ends never free enough.
    fn new<'a>(
        snapshot: &Snapshot,
        queue: &Jobs,
        ahead: impl Iterator<Item = &'a Placement>,
        need: u32,
        memory_mib: u32,
    ) -> Option<Hold> {
        let mut hold = Hold {
            memory_mib,
            shadow_s: snapshot.now_s,
            extra: 0,
        };
        let gpus = &snapshot.gpus;
        let mut counted = vec![false; gpus.len()];
        let mut releases: Vec<(f64, &[u32])> = Vec::new();
        for p in ahead {
            for &g in &p.gpus {
                if let Some(counted) = counted.get_mut(g as usize) {
                    // Taken now: free again only at its end.
                    *counted = true;
                }
            }
            let est_s = queue.est_runtime_s[p.job as usize];
            releases.push((snapshot.now_s + est_s, &p.gpus));
        }
        let mut available = 0u32;
        for (g, counted) in counted.iter_mut().enumerate() {
            if !*counted && gpus.is_free(g) && hold.usable(snapshot, g as u32) {
                *counted = true;
                available += 1;
            }
        }
        if available >= need {
            return None;
        }
        // Taken this cycle, not before: their GPUs come back below.
        for p in releases.iter().flat_map(|r| r.1) {
            if let Some(counted) = counted.get_mut(*p as usize) {
                *counted = false;
            }
        }
        releases.extend(
            (snapshot.running.iter()).map(|a| (a.expected_end_s.max(snapshot.now_s), &a.gpus[..])),
        );
        releases.retain(|r| r.0.is_finite());
        releases.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut i = 0;
        while i < releases.len() {
            let end_s = releases[i].0;
            // Everything released at one instant is free at once.
            while i < releases.len() && releases[i].0 <= end_s {
                for &g in releases[i].1 {
                    let Some(counted) = counted.get_mut(g as usize) else {
                        continue;
                    };
                    if !*counted && hold.usable(snapshot, g) {
                        *counted = true;
                        available += 1;
                    }
                }
                i += 1;
            }
            if available >= need {
                hold.shadow_s = end_s;
                hold.extra = available - need;
                return Some(hold);
            }
        }
        None
    }

    /// Whether GPU `g` could hold the job once free: healthy, on a node, with its memory.
    fn usable(&self, snapshot: &Snapshot, g: u32) -> bool {
        let gpus = &snapshot.gpus;
        let g = g as usize;
        g < gpus.len()
            && gpus.healthy[g] != 0
            && (gpus.node[g] as usize) < snapshot.nodes.len()
            && gpus.memory_free_mib[g] >= self.memory_mib
    }
}

#[cfg(test)]
mod tests;
