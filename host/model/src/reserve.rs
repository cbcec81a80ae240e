//! The host's guard against starvation by backfill, applied to every strategy's answer (the
//! plugins' and the native fallback's alike).
//!
//! A strategy that places whatever fits now lets a stream of small jobs keep a large gang
//! waiting for ever: GPUs freed one at a time are taken again before enough are free together.
//! Once a job has waited [`reserve_after_s`](guard), the guard holds GPUs for it (EASY
//! backfill): its *shadow time* is the earliest moment, by the running allocations' expected
//! ends, at which enough GPUs it can use are free together, in one group of the tightest scope
//! its topology preference could be met in (an NVLink domain, a node, a rack, or anywhere), and
//! its tenant's quota has room for it; a placement of a job after it (in [`priority_order`])
//! stands only when that job is expected to end by then, or when it takes only GPUs and quota
//! still spare at the shadow time (`extra`). The rest wait for a later cycle; the GPUs they
//! would have taken are offered once more, to the jobs after the waiting one that are expected
//! to end by the shadow time ([`Backfill`]).
//!
//! When the waiting job fits in what is free now and the strategy placed others instead, those
//! of tenants holding less than its own (GPUs over weight: fair share's order) stand; the
//! others are held back and the [`Backfill`] offers the waiting job alone, for the strategy to
//! place. The guard never places a job itself. Estimates are the jobs' own; a run past its
//! estimate is expected to run as long again as it has, and the next cycle computes it all
//! again.

use crate::fit::priority_order;
use crate::{Jobs, Placement, Snapshot, Topology};

/// What the guard did in one cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Queue position of the job GPUs are held for.
    pub job: u32,
    /// When enough GPUs for it are expected to be free, on the host's clock.
    pub shadow_s: f64,
    /// Queue positions of the jobs whose placements were held back this cycle.
    pub held_back: Vec<u32>,
    /// The job fits in what is free now (its shadow time is now): the strategy placed others
    /// instead, of tenants holding no less than its own, and the [`Backfill`] offers it alone.
    pub fits_now: bool,
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
    let Some((job, need)) = first_waiting(snapshot, queue, &order, &placements, reserve_after_s)
    else {
        return (placements, None);
    };
    let job_rank = rank[job as usize];
    let behind = |p: &Placement| rank.get(p.job as usize).is_some_and(|&r| r > job_rank);
    let hold = {
        let ahead: Vec<&Placement> = placements.iter().filter(|p| !behind(p)).collect();
        Hold::new(snapshot, queue, job, need, &ahead)
    };
    let Some(mut hold) = hold else {
        return (placements, None);
    };
    if hold.fits_now
        && passed_over_for_less_served(snapshot, queue, job, &placements, &behind, &hold)
    {
        return (placements, None);
    }
    let now_s = snapshot.now_s;
    let mut held_back = Vec::new();
    let kept = placements
        .into_iter()
        .filter(|p| {
            // A NaN estimate is never in time.
            let est_s = queue.est_runtime_s[p.job as usize];
            if !behind(p) || now_s + est_s <= hold.shadow_s || hold.admits(snapshot, queue, p) {
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
        fits_now: hold.fits_now,
    };
    (kept, Some(reservation))
}

/// Whether the strategy placed, instead of `job` where it fits now, a job of a tenant holding
/// less than its own (GPUs over weight): fair share's order, which the guard keeps. A stream of
/// another tenant's small jobs, ahead of it only by a tie or by the strategy's own order, is
/// held back instead (a review's case: `fairshare` broke ties by tenant index, and the gang of
/// the second tenant waited as long as the first tenant's stream lasted).
fn passed_over_for_less_served(
    snapshot: &Snapshot,
    queue: &Jobs,
    job: u32,
    placements: &[Placement],
    behind: &dyn Fn(&Placement) -> bool,
    hold: &Hold,
) -> bool {
    let share = |t: u32| {
        (snapshot.tenants.get(t as usize))
            .map_or(f64::INFINITY, |t| f64::from(t.used_gpus) / t.weight)
    };
    let own = share(queue.tenant[job as usize]);
    let mut trial = hold.clone();
    placements
        .iter()
        .filter(|p| behind(p))
        .any(|p| !trial.admits(snapshot, queue, p) && share(queue.tenant[p.job as usize]) < own)
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
                offered[position as usize] = reservation.fits_now;
            } else if behind && !reservation.fits_now {
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
/// `reserve_after_s`, and that its tenant's quota and the cluster's healthy GPUs could ever hold;
/// with the GPUs to hold for it (all of a gang; of a job taken in parts, as many as its quota
/// and the cluster allow).
fn first_waiting(
    snapshot: &Snapshot,
    queue: &Jobs,
    order: &[u32],
    placements: &[Placement],
    reserve_after_s: f64,
) -> Option<(u32, u32)> {
    let mut placed = vec![false; queue.len()];
    for p in placements {
        if let Some(placed) = placed.get_mut(p.job as usize) {
            *placed = true;
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
    for &position in order {
        let job = queue.row(position as usize);
        // A NaN submission time has not waited.
        let waited = snapshot.now_s - job.submit_s >= reserve_after_s;
        if placed[position as usize] || job.gpus == 0 || !waited {
            continue;
        }
        let Some(tenant) = snapshot.tenants.get(job.tenant as usize) else {
            continue;
        };
        // The quota, not the room in it now: the tenant's own small jobs, taking its quota
        // one GPU at a time, starve its gang as other tenants' take GPUs (a review's case).
        let quota = tenant.quota_gpus.map_or(u64::MAX, u64::from);
        let capacity =
            (memory.len() - memory.partition_point(|&m| m < job.memory_per_gpu_mib)) as u64;
        let need = if job.gang {
            u64::from(job.gpus)
        } else {
            u64::from(job.gpus).min(quota).min(capacity)
        };
        if need > 0 && need <= quota && need <= capacity {
            return Some((position, need as u32));
        }
    }
    None
}

/// Where a job's GPUs must be together: the groups of GPUs the guard counts in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    Domain,
    Node,
    Rack,
    Cluster,
}

impl Scope {
    /// The scopes a preference asks for, from the tightest outwards, as the `topology` plugin
    /// widens them while a job waits.
    fn of(topology: Topology) -> &'static [Scope] {
        match topology {
            Topology::None => &[Scope::Cluster],
            Topology::SameNvlinkDomain => {
                &[Scope::Domain, Scope::Node, Scope::Rack, Scope::Cluster]
            }
            Topology::SameNode => &[Scope::Node, Scope::Rack, Scope::Cluster],
            Topology::SameRack => &[Scope::Rack, Scope::Cluster],
        }
    }

    /// Each GPU's group, numbered densely from 0, and the number of groups.
    fn groups(self, snapshot: &Snapshot) -> (Vec<u32>, usize) {
        let gpus = &snapshot.gpus;
        let key = |g: usize| match self {
            Scope::Domain => gpus.nvlink_domain[g],
            Scope::Node => gpus.node[g],
            Scope::Rack => gpus.rack[g],
            Scope::Cluster => 0,
        };
        let mut dense = std::collections::HashMap::new();
        let groups = (0..gpus.len())
            .map(|g| {
                let next = dense.len() as u32;
                *dense.entry(key(g)).or_insert(next)
            })
            .collect();
        (groups, dense.len())
    }
}

/// GPUs held for one job: the group of its scope they are held in, when enough of them and of
/// its tenant's quota are expected free, and how many of each beyond its need.
#[derive(Clone)]
struct Hold {
    memory_mib: u32,
    /// Each GPU's group, and the group held.
    groups: Vec<u32>,
    group: u32,
    shadow_s: f64,
    /// Usable GPUs of the group free at the shadow time beyond the need, not yet promised to a
    /// placement that outlives it.
    extra: u32,
    tenant: u32,
    /// The same of the tenant's quota (`u64::MAX` without one).
    quota_extra: u64,
    /// It fits in what is free now.
    fits_now: bool,
}

/// GPUs expected to be released at a time, and the tenant holding them.
type Release<'a> = (f64, &'a [u32], u32);

impl Hold {
    /// The hold for queue position `job`, needing `need` GPUs, beside the placements `ahead` of
    /// it this cycle (their GPUs and quota are taken now and come back at their expected end).
    /// `None` when it fits now (the strategy chose otherwise) or the expected ends never free
    /// enough.
    fn new(
        snapshot: &Snapshot,
        queue: &Jobs,
        job: u32,
        need: u32,
        ahead: &[&Placement],
    ) -> Option<Hold> {
        let row = queue.row(job as usize);
        let now_s = snapshot.now_s;
        let gpus = &snapshot.gpus;
        let mut hold = Hold {
            memory_mib: row.memory_per_gpu_mib,
            groups: Vec::new(),
            group: 0,
            shadow_s: now_s,
            extra: 0,
            tenant: row.tenant,
            quota_extra: u64::MAX,
            fits_now: false,
        };
        // The tightest scope of its preference whose largest group could ever hold it.
        for &scope in Scope::of(row.topology) {
            let (groups, count) = scope.groups(snapshot);
            let mut size = vec![0u32; count];
            for g in 0..gpus.len() {
                if hold.usable(snapshot, g as u32) {
                    size[groups[g] as usize] += 1;
                }
            }
            if size.iter().any(|&n| n >= need) {
                hold.groups = groups;
                break;
            }
        }
        if hold.groups.is_empty() {
            return None;
        }
        let mut releases: Vec<Release> = Vec::new();
        let mut taken = vec![false; gpus.len()];
        for p in ahead {
            for &g in &p.gpus {
                taken[g as usize] = true;
            }
            let est_s = queue.est_runtime_s[p.job as usize];
            releases.push((now_s + est_s, &p.gpus, queue.tenant[p.job as usize]));
        }
        // A run past its expected end is expected to run as long again (it may run for days past
        // an estimate: held for as ending now, it held every later job back all that time).
        let end_of = |a: &crate::Allocation| match a.expected_end_s > now_s {
            true => a.expected_end_s,
            false => now_s + (now_s - a.start_s).max(0.0),
        };
        releases.extend((snapshot.running.iter()).map(|a| (end_of(a), &a.gpus[..], a.tenant)));
        // A NaN end never comes.
        releases.retain(|r| r.0.is_finite());
        releases.sort_by(|a, b| a.0.total_cmp(&b.0));
        let free_now = |g: usize| gpus.is_free(g) && !taken[g];
        let (gpus_s, group) = hold.gpus_free(snapshot, &releases, &free_now, need)?;
        hold.group = group;
        let quota = hold.quota_free(snapshot, &releases, ahead, queue, need)?;
        // Free now, not expected now (an overdue run still holds its GPUs).
        let fits_now = (0..gpus.len())
            .filter(|&g| free_now(g) && hold.usable(snapshot, g as u32))
            .filter(|&g| hold.groups[g] == group)
            .count()
            >= need as usize;
        let room_now = quota.is_none_or(|(_, room)| room >= i64::from(need));
        hold.fits_now = fits_now && room_now;
        hold.shadow_s = match hold.fits_now {
            true => now_s,
            false => quota.map_or(gpus_s, |(quota_s, _)| gpus_s.max(quota_s)),
        };
        if let Some((_, room)) = quota {
            let back: usize = (releases.iter())
                .take_while(|r| r.0 <= hold.shadow_s)
                .filter(|r| r.2 == hold.tenant)
                .map(|r| r.1.len())
                .sum();
            hold.quota_extra = (room + back as i64 - i64::from(need)).max(0) as u64;
        }
        // What is spare at the shadow time, of the group and of the quota.
        let mut counted = vec![false; gpus.len()];
        let mut in_group = 0u32;
        let releases_by = releases.iter().take_while(|r| r.0 <= hold.shadow_s);
        let now = (0..gpus.len()).filter(|&g| free_now(g));
        for g in now.chain(releases_by.flat_map(|r| r.1.iter().map(|&g| g as usize))) {
            if g < gpus.len() && !counted[g] && hold.held(snapshot, g as u32) {
                counted[g] = true;
                in_group += 1;
            }
        }
        hold.extra = in_group.saturating_sub(need);
        Some(hold)
    }

    /// When, and in which group, `need` usable GPUs are first free: those free now, then those
    /// of `releases` (sorted by end) as they come back.
    fn gpus_free(
        &self,
        snapshot: &Snapshot,
        releases: &[Release],
        free_now: &dyn Fn(usize) -> bool,
        need: u32,
    ) -> Option<(f64, u32)> {
        let gpus = &snapshot.gpus;
        let count = self.groups.iter().max().map_or(0, |&m| m as usize + 1);
        let mut free = vec![0u32; count];
        let mut counted = vec![false; gpus.len()];
        let mut add = |g: usize, free: &mut Vec<u32>| {
            if g < gpus.len() && !counted[g] && self.usable(snapshot, g as u32) {
                counted[g] = true;
                let group = self.groups[g];
                free[group as usize] += 1;
                return (free[group as usize] >= need).then_some(group);
            }
            None
        };
        let mut found = None;
        for g in (0..gpus.len()).filter(|&g| free_now(g)) {
            found = found.or(add(g, &mut free));
        }
        if let Some(group) = found {
            return Some((snapshot.now_s, group));
        }
        let mut i = 0;
        while i < releases.len() {
            let end_s = releases[i].0;
            // Everything released at one instant is free at once.
            while i < releases.len() && releases[i].0 <= end_s {
                for &g in releases[i].1 {
                    found = found.or(add(g as usize, &mut free));
                }
                i += 1;
            }
            if let Some(group) = found {
                return Some((end_s, group));
            }
        }
        None
    }

    /// When the tenant's quota first has room for `need` GPUs beside what it holds and the
    /// placements `ahead` give it, as its `releases` (sorted by end) come back, and its room
    /// now: `Some(None)` without a quota, `None` when it never has the room.
    fn quota_free(
        &self,
        snapshot: &Snapshot,
        releases: &[Release],
        ahead: &[&Placement],
        queue: &Jobs,
        need: u32,
    ) -> Option<Option<(f64, i64)>> {
        let tenant = snapshot.tenants.get(self.tenant as usize)?;
        let Some(quota) = tenant.quota_gpus else {
            return Some(None);
        };
        let given: u64 = (ahead.iter())
            .filter(|p| queue.tenant[p.job as usize] == self.tenant)
            .map(|p| p.gpus.len() as u64)
            .sum();
        let now = i64::from(quota) - i64::from(tenant.used_gpus) - given as i64;
        let mut room = now;
        let mut at = snapshot.now_s;
        let mut i = 0;
        while room < i64::from(need) && i < releases.len() {
            at = releases[i].0;
            while i < releases.len() && releases[i].0 <= at {
                if releases[i].2 == self.tenant {
                    room += releases[i].1.len() as i64;
                }
                i += 1;
            }
        }
        (room >= i64::from(need)).then_some(Some((at.max(snapshot.now_s), now)))
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

    /// Whether GPU `g` is one the hold counts on: usable, in the group held.
    fn held(&self, snapshot: &Snapshot, g: u32) -> bool {
        self.usable(snapshot, g) && self.groups.get(g as usize) == Some(&self.group)
    }

    /// Whether placement `p`, of a job that outlives the shadow time, leaves the held job
    /// enough at it; if so, what it takes is promised away.
    fn admits(&mut self, snapshot: &Snapshot, queue: &Jobs, p: &Placement) -> bool {
        let takes = p.gpus.iter().filter(|&&g| self.held(snapshot, g)).count() as u32;
        let quota = match queue.tenant[p.job as usize] == self.tenant {
            true => p.gpus.len() as u64,
            false => 0,
        };
        if takes > self.extra || quota > self.quota_extra {
            return false;
        }
        self.extra -= takes;
        self.quota_extra -= quota;
        true
    }
}

#[cfg(test)]
mod tests;
