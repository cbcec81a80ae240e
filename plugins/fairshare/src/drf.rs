//! Dominant-resource fair share (DRF) across tenants, with EASY backfill.
//!
//! Each tenant's pending jobs form a queue in priority order (priority, then submission, then
//! queue position). At every step the tenant with the lowest *dominant share* goes next:
//! the larger of its share of the cluster's healthy GPUs and of their memory, divided by its
//! weight. Usage starts from the snapshot and grows with each placement of the cycle, so
//! tenants take turns the way their shares dictate. The chosen tenant's head job is placed by
//! best fit (one node when one holds it, else across nodes); a job that is not a gang may take
//! part of its GPUs.
//!
//! A job its tenant's quota cannot cover is dropped for the cycle. The first job that does not
//! fit for lack of GPUs becomes the cycle's reservation (see [`super::backfill`]); from then on
//! a job is placed only if it cannot delay the reserved one.

use super::backfill::{Release, Reservation, reserve};
use super::fit::{FreeIndex, priority_order};
use super::sched::{Job, Jobs, Placement, Snapshot, Tenant};
use super::usable::UsableCounts;

/// One scheduling cycle of the fair-share strategy.
pub fn schedule(snapshot: &Snapshot, queue: &Jobs) -> Vec<Placement> {
    let index = FreeIndex::new(snapshot);
    if index.total_free() == 0 || queue.is_empty() {
        return Vec::new();
    }
    let mut cycle = Cycle::new(snapshot, queue, index);
    while cycle.index.total_free() > 0 {
        let Some(tenant) = cycle.next_tenant() else {
            break;
        };
        if let Some(position) = cycle.queues.pop(tenant) {
            cycle.consider(tenant, position);
        }
    }
    cycle.placements
}

/// A cycle under way: what is free, each tenant's share and queue, the reservation, and the
/// placements made so far.
struct Cycle<'a> {
    snapshot: &'a Snapshot,
    queue: &'a Jobs,
    index: FreeIndex,
    free: UsableCounts,
    shares: Shares,
    queues: TenantQueues,
    backfill: Backfill,
    placements: Vec<Placement>,
}

impl<'a> Cycle<'a> {
    fn new(snapshot: &'a Snapshot, queue: &'a Jobs, index: FreeIndex) -> Self {
        Self {
            snapshot,
            queue,
            index,
            free: UsableCounts::free(snapshot),
            shares: Shares::new(snapshot),
            queues: TenantQueues::new(snapshot.tenants.len(), queue),
            backfill: Backfill::new(snapshot),
            placements: Vec::new(),
        }
    }

    /// The tenant with jobs left and the lowest dominant share; between equal shares, the one
    /// whose next job comes first (priority, then submission): ties went to the lowest tenant
    /// index, and a tenant listed first took every turn while shares stayed equal (a cluster
    /// that one job fills, each job ending before the next cycle), however long another
    /// tenant's jobs had waited.
    fn next_tenant(&self) -> Option<u32> {
        let (shares, queues) = (&self.shares, &self.queues);
        queues.active.iter().copied().min_by(|&a, &b| {
            shares
                .dominant(a)
                .total_cmp(&shares.dominant(b))
                .then_with(|| queues.head_rank(a).cmp(&queues.head_rank(b)))
                .then(a.cmp(&b))
        })
    }

    /// Places `tenant`'s job at queue position `position` when its quota, the reservation and
    /// the free GPUs allow; else reserves for it if it is the first blocked for lack of GPUs.
    fn consider(&mut self, tenant: u32, position: u32) {
        let job = self.queue.row(position as usize);
        let Some((want, allowed)) = self.allowed(tenant, &job) else {
            return;
        };
        match self.fit(&job, allowed) {
            Some(gpus) => self.place(tenant, position, &job, gpus),
            // Capacity: the first such job that can ever fit is reserved; the others wait.
            None if self.backfill.reservation.is_none() => self.backfill.try_reserve(
                self.snapshot,
                &self.free,
                self.queue,
                &self.placements,
                position,
                want,
                job.memory_per_gpu_mib,
            ),
            None => {}
        }
    }

    /// The GPUs `job` wants within its tenant's quota, and how many of them it may take now
    /// without delaying the reservation; none when it cannot be placed this cycle.
    fn allowed(&mut self, tenant: u32, job: &Job) -> Option<(u32, u32)> {
        // Quota: a job the tenant cannot afford is dropped for this cycle; it holds no GPUs
        // back, so it never becomes the reservation.
        let quota = self.index.quota_left(job.tenant);
        let want = job.gpus.min(quota);
        if want == 0 || (job.gang && want < job.gpus) {
            if quota == 0 {
                self.queues.retire(tenant);
            }
            return None;
        }
        // Backfill: once a job is reserved, nothing may delay it.
        let allowed = match &self.backfill.reservation {
            Some(r) => r.allowance(self.snapshot.now_s, job.est_runtime_s, want),
            None => want,
        };
        if allowed == 0 || (job.gang && allowed < job.gpus) {
            return None;
        }
        Some((want, allowed))
    }

    /// The GPUs `job` takes by best fit (a gang all of its own, another up to `allowed`), or
    /// none when they are not free.
    fn fit(&self, job: &Job, allowed: u32) -> Option<Vec<u32>> {
        let memory = job.memory_per_gpu_mib;
        let usable = self.free.at_least(memory);
        let count = if job.gang {
            job.gpus
        } else {
            allowed.min(usable)
        };
        if count == 0 || usable < count {
            return None;
        }
        choose(&self.index, count, memory).filter(|g| g.len() == count as usize)
    }

    /// Places `job` (queue position `position`) on `gpus`: its tenant's share and the
    /// reservation are charged, and the tenant retired once its quota is spent.
    fn place(&mut self, tenant: u32, position: u32, job: &Job, gpus: Vec<u32>) {
        let now_s = self.snapshot.now_s;
        let taken = gpus.len() as u64;
        self.index.take(job.tenant, &gpus);
        self.free.remove(&gpus);
        let memory = taken * job.memory_per_gpu_mib as u64;
        self.shares.charge(tenant, taken, memory);
        if let Some(r) = &mut self.backfill.reservation {
            r.charge(now_s, job.est_runtime_s, gpus.len() as u32);
        }
        if !(now_s + job.est_runtime_s).is_finite() {
            // Never expected back: keeps `reachable` exact, so a job that passes it is reserved.
            self.backfill.reachable.remove(&gpus);
        }
        self.placements.push(Placement {
            job: position,
            gpus,
        });
        if self.index.quota_left(job.tenant) == 0 {
            self.queues.retire(tenant);
        }
    }
}

/// `count` usable GPUs by best fit: the fullest node that holds them all, else across nodes.
fn choose(index: &FreeIndex, count: u32, memory_mib: u32) -> Option<Vec<u32>> {
    match index.best_fit_node(count, memory_mib) {
        Some(node) => Some(index.choose_on_node(node, count, memory_mib)),
        None => index.choose_across_nodes(count, memory_mib, None),
    }
}

/// Each tenant's usage and dominant share, kept current through the cycle.
struct Shares {
    used_gpus: Vec<u64>,
    used_memory_mib: Vec<u64>,
    weight: Vec<f64>,
    dominant: Vec<f64>,
    total_gpus: f64,
    total_memory_mib: f64,
}

impl Shares {
    fn new(snapshot: &Snapshot) -> Self {
        let healthy = snapshot.gpus.iter().filter(|g| g.healthy);
        let (gpus, memory) = healthy.fold((0u64, 0u64), |(n, m), g| {
            (n + 1, m + g.memory_total_mib as u64)
        });
        let mut shares = Self {
            used_gpus: snapshot
                .tenants
                .iter()
                .map(|t| t.used_gpus as u64)
                .collect(),
            used_memory_mib: snapshot.tenants.iter().map(|t| t.used_memory_mib).collect(),
            weight: snapshot.tenants.iter().map(weight).collect(),
            dominant: vec![0.0; snapshot.tenants.len()],
            // Guards only: a cluster without healthy GPUs never gets this far.
            total_gpus: gpus.max(1) as f64,
            total_memory_mib: memory.max(1) as f64,
        };
        for t in 0..snapshot.tenants.len() {
            shares.update(t);
        }
        shares
    }

    fn dominant(&self, tenant: u32) -> f64 {
        self.dominant[tenant as usize]
    }

    /// Adds a placement of `gpus` GPUs asking `memory_mib` in all to `tenant`'s usage.
    fn charge(&mut self, tenant: u32, gpus: u64, memory_mib: u64) {
        let t = tenant as usize;
        self.used_gpus[t] += gpus;
        self.used_memory_mib[t] += memory_mib;
        self.update(t);
    }

    fn update(&mut self, t: usize) {
        let gpu_share = self.used_gpus[t] as f64 / self.total_gpus;
        let memory_share = self.used_memory_mib[t] as f64 / self.total_memory_mib;
        self.dominant[t] = gpu_share.max(memory_share) / self.weight[t];
    }
}

/// A tenant's weight; one that is not a positive finite number counts as the default 1.0.
fn weight(tenant: &Tenant) -> f64 {
    if tenant.weight.is_finite() && tenant.weight > 0.0 {
        tenant.weight
    } else {
        1.0
    }
}

/// The pending jobs of each tenant in priority order, consumed from the front.
struct TenantQueues {
    /// Each tenant's jobs in priority order: (rank in the whole queue's order, position).
    jobs: Vec<Vec<(u32, u32)>>,
    next: Vec<usize>,
    /// Tenants with jobs left; order is irrelevant (ties are broken by their next job).
    active: Vec<u32>,
}

impl TenantQueues {
    fn new(tenants: usize, queue: &Jobs) -> Self {
        let mut jobs = vec![Vec::new(); tenants];
        for (rank, position) in priority_order(queue).into_iter().enumerate() {
            let job = queue.row(position as usize);
            // A job of an unknown tenant or asking nothing can never be placed validly.
            if job.gpus > 0
                && let Some(list) = jobs.get_mut(job.tenant as usize)
            {
                list.push((rank as u32, position));
            }
        }
        let active = (0..tenants as u32)
            .filter(|&t| !jobs[t as usize].is_empty())
            .collect();
        Self {
            next: vec![0; tenants],
            jobs,
            active,
        }
    }

    /// Where `tenant`'s head job comes in the whole queue's priority order (past every job
    /// once it has none left).
    fn head_rank(&self, tenant: u32) -> u32 {
        let t = tenant as usize;
        self.jobs[t]
            .get(self.next[t])
            .map_or(u32::MAX, |&(rank, _)| rank)
    }

    /// The head job of `tenant`, retiring the tenant once its queue is empty.
    fn pop(&mut self, tenant: u32) -> Option<u32> {
        let t = tenant as usize;
        let position = self.jobs[t]
            .get(self.next[t])
            .map(|&(_, position)| position);
        self.next[t] += 1;
        if self.next[t] >= self.jobs[t].len() {
            self.retire(tenant);
        }
        position
    }

    /// Drops `tenant`'s remaining jobs for this cycle.
    fn retire(&mut self, tenant: u32) {
        if let Some(i) = self.active.iter().position(|&t| t == tenant) {
            self.active.swap_remove(i);
        }
    }
}

/// The cycle's reservation, and what is needed to compute it.
struct Backfill {
    reservation: Option<Reservation>,
    /// What any job could ever get: skips hopeless reservations in O(log n) rather than
    /// sorting every release for each job larger than the cluster. Placing within the cycle
    /// only moves GPUs from free to released later, so it stays an upper bound.
    reachable: UsableCounts,
}

impl Backfill {
    fn new(snapshot: &Snapshot) -> Self {
        Self {
            reservation: None,
            reachable: UsableCounts::reachable(snapshot),
        }
    }

    /// Reserves for queue position `position`, needing `need` GPUs of `memory_mib`, unless no
    /// expected release ever frees enough.
    #[allow(clippy::too_many_arguments)]
    fn try_reserve(
        &mut self,
        snapshot: &Snapshot,
        free: &UsableCounts,
        queue: &Jobs,
        placements: &[Placement],
        position: u32,
        need: u32,
        memory_mib: u32,
    ) {
        if need > self.reachable.at_least(memory_mib) {
            return;
        }
        let running = snapshot.running.iter().map(|a| Release {
            end_s: a.expected_end_s,
            gpus: &a.gpus,
        });
        // This cycle's placements are expected to end after their estimated runtime.
        let placed = placements.iter().map(|p| Release {
            end_s: snapshot.now_s + queue.est_runtime_s[p.job as usize],
            gpus: &p.gpus,
        });
        self.reservation = reserve(
            snapshot,
            free,
            running.chain(placed),
            position,
            need,
            memory_mib,
        );
    }
}
