//! One scheduling cycle in three steps, so that a host shared behind a lock is not held while a
//! plugin runs: a plan (the snapshot) taken under the lock ([`Host::plan_cycle`]), the decision
//! (the plugin or the native fallback, validation, the policy's say on each placement) without
//! it ([`CyclePlan::decide`]), and the application under the lock again ([`Host::apply_cycle`]),
//! re-validated against the state as it is then when it changed meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::{Assignment, CycleReport, Decider, Host, Reserved};
use crate::plugin::{Call, Fault, PluginError};
use crate::policy::request::{Action, Admission, Request, Subject};
use crate::scheduling::model::{Jobs, Placement, Snapshot};
use crate::scheduling::{SchedulerPlugin, native, snapshot, validate};
use gantry_model::reserve::{Backfill, Reservation};

/// What a cycle decides on, taken from the host's state at one moment (see the module docs).
pub struct CyclePlan {
    start: Instant,
    span: tracing::Span,
    /// The host's state generation the snapshot was taken at.
    generation: u64,
    snap: Snapshot,
    queue: Jobs,
    /// The queued jobs' keys ([`PendingJob::key`](crate::scheduling::state::PendingJob::key)),
    /// by queue position: numbers, so a plan copies no job ids.
    job_keys: Vec<u64>,
    /// The queued jobs' ids, by queue position, when a policy decides each placement (its
    /// input names the job); empty otherwise, so a cycle without a policy copies no ids.
    job_ids: Vec<String>,
    plugin: Option<Arc<SchedulerPlugin>>,
    decider: Decider,
    /// See [`HostConfig::reserve_after_s`](crate::HostConfig::reserve_after_s).
    reserve_after_s: f64,
    report: CycleReport,
}

/// A cycle's decision, ready to apply with [`Host::apply_cycle`].
pub struct DecidedCycle {
    plan: CyclePlan,
    placements: Vec<Placement>,
    /// GPUs held for a job that waited, by queue position.
    reservation: Option<gantry_model::reserve::Reservation>,
    /// Nothing to apply: nothing was pending, or the fallback's answer was invalid.
    finished: bool,
}

impl Host {
    /// One scheduling cycle at time `now_s`: the active plugin decides (the native strategy when
    /// none is loaded, it is quarantined, or it faults); the answer is validated and applied.
    pub async fn schedule_cycle(&mut self, now_s: f64) -> CycleReport {
        let decided = self.plan_cycle(now_s).decide().await;
        self.apply_cycle(decided)
    }

    /// The first step of a cycle for a host shared behind a lock: what the strategy sees, taken
    /// from the state now. Decide it without the lock ([`CyclePlan::decide`]), then apply it
    /// under the lock ([`Host::apply_cycle`]).
    pub fn plan_cycle(&self, now_s: f64) -> CyclePlan {
        let pending = self.state.pending.len();
        let plugin = self.scheduler.clone();
        let span = tracing::debug_span!(
            "gantry_scheduling.cycle",
            plugin = plugin.as_ref().map_or(native::NAME, |p| p.name()),
            pending
        );
        let (snap, queue) = snapshot::build(&self.state, now_s);
        CyclePlan {
            start: Instant::now(),
            span,
            generation: self.generation,
            snap,
            queue,
            job_keys: self.state.pending.iter().map(|p| p.key).collect(),
            job_ids: match self.policy {
                Some(_) => self
                    .state
                    .pending
                    .iter()
                    .map(|p| p.spec.id.clone())
                    .collect(),
                None => Vec::new(),
            },
            plugin,
            decider: self.decider(),
            reserve_after_s: self.reserve_after_s,
            report: CycleReport {
                now_s,
                decided_by: native::NAME.into(),
                fallback_reason: None,
                fault: None,
                placements: Vec::new(),
                policy_refused: Vec::new(),
                reserved: None,
                pending,
                elapsed_us: 0.0,
            },
        }
    }

    /// The last step of a cycle: applies the placements decided. When the state changed since the
    /// plan (a job cancelled, a GPU marked unhealthy, another cycle applied), each placement is
    /// validated again against the state now, and those no longer valid are dropped (their jobs
    /// stay pending).
    pub fn apply_cycle(&mut self, decided: DecidedCycle) -> CycleReport {
        let DecidedCycle {
            plan,
            placements,
            reservation,
            finished,
        } = decided;
        let _span = plan.span.enter();
        let mut report = plan.report;
        if finished {
            return report;
        }
        report.reserved = reservation.and_then(|r| self.reserved(&plan.job_keys, r));
        let placements = if plan.generation == self.generation {
            placements
        } else {
            self.still_valid(&plan.job_keys, placements, report.now_s)
        };
        let state = self.state_mut();
        for p in placements {
            let job = &state.pending[p.job as usize];
            let tenant = state.cluster.tenants[job.tenant as usize].name.clone();
            let gpus = p
                .gpus
                .iter()
                .map(|&g| state.cluster.gpus[g as usize].id.clone())
                .collect();
            let alloc = state.allocate(p.job as usize, p.gpus, report.now_s);
            report.placements.push(Assignment {
                job_id: alloc.job_id,
                tenant,
                gpus,
                alloc_id: alloc.id,
            });
        }
        state.prune_pending();
        report.pending = state.pending.len();
        report.elapsed_us = plan.start.elapsed().as_secs_f64() * 1e6;
        report
    }

    /// A reservation by queue position at plan time, named by the jobs' ids now (a job that left
    /// the queue meanwhile is left out).
    fn reserved(
        &self,
        job_keys: &[u64],
        r: gantry_model::reserve::Reservation,
    ) -> Option<Reserved> {
        // One map, not a scan of the queue per job held back (under the host's lock).
        let ids: HashMap<u64, &str> = (self.state.pending.iter())
            .map(|p| (p.key, p.spec.id.as_str()))
            .collect();
        let id = |position: u32| {
            ids.get(&job_keys[position as usize])
                .map(|id| id.to_string())
        };
        let reserved = Reserved {
            job_id: id(r.job)?,
            shadow_s: r.shadow_s,
            held_back: r.held_back.into_iter().filter_map(id).collect(),
        };
        if !reserved.held_back.is_empty() {
            tracing::debug!(
                job = %reserved.job_id,
                shadow_s = reserved.shadow_s,
                held_back = reserved.held_back.len(),
                "GPUs held for a waiting job: later jobs that would delay it wait"
            );
        }
        Some(reserved)
    }

    /// Placements decided on an older state, renumbered to the queue now and kept only while
    /// they stay valid together against the state now.
    fn still_valid(
        &self,
        job_keys: &[u64],
        placements: Vec<Placement>,
        now_s: f64,
    ) -> Vec<Placement> {
        let (snap, queue) = snapshot::build(&self.state, now_s);
        let position: HashMap<u64, u32> = (self.state.pending.iter().enumerate())
            .map(|(i, p)| (p.key, i as u32))
            .collect();
        let mut kept = Vec::with_capacity(placements.len());
        // Each checked once beside those kept (not all kept again per placement).
        let mut checker = gantry_model::Checker::new(&snap, &queue);
        for p in placements {
            let Some(&job) = position.get(&job_keys[p.job as usize]) else {
                tracing::warn!("placement dropped: its job left the queue during the cycle");
                continue;
            };
            let id = &self.state.pending[job as usize].spec.id;
            let p = Placement { job, gpus: p.gpus };
            if let Err(reason) = checker.add(kept.len(), &p) {
                tracing::warn!(
                    job = %id,
                    "placement dropped: the state changed during the cycle ({reason})"
                );
                continue;
            }
            kept.push(p);
        }
        kept
    }
}

impl CyclePlan {
    /// The second step of a cycle, needing no access to the host: the strategy's placements,
    /// validated against the plan's snapshot, less those the policy refuses.
    pub async fn decide(mut self) -> DecidedCycle {
        let span = self.span.clone();
        async move {
            if self.job_keys.is_empty() {
                return self.finished();
            }
            let placements = match self.plugin.clone() {
                None => native::schedule(&self.snap, &self.queue),
                Some(p) => self.plugin_decides(&p).await,
            };
            if self.report.decided_by == native::NAME
                && let Err(reason) = validate::validate(&self.snap, &self.queue, &placements)
            {
                // The fallback is our own code; if it is wrong, place nothing rather than
                // corrupt state.
                tracing::error!("native strategy gave an invalid answer, nothing placed: {reason}");
                self.report.elapsed_us = self.start.elapsed().as_secs_f64() * 1e6;
                return self.finished();
            }
            let (mut placements, reservation) = gantry_model::reserve::guard(
                &self.snap,
                &self.queue,
                placements,
                self.reserve_after_s,
            );
            if let Some(r) = reservation.as_ref().filter(|r| !r.held_back.is_empty()) {
                let more = self.backfill(&placements, r).await;
                placements.extend(more);
            }
            let placements = self.policy_filter(placements).await;
            DecidedCycle {
                plan: self,
                placements,
                reservation,
                finished: false,
            }
        }
        .instrument(span)
        .await
    }

    fn finished(self) -> DecidedCycle {
        DecidedCycle {
            plan: self,
            placements: Vec::new(),
            reservation: None,
            finished: true,
        }
    }

    /// The active plugin's placements for this cycle, or the fallback's when it is quarantined,
    /// backing off, faults, or places nothing for too long while the fallback could place.
    async fn plugin_decides(&mut self, p: &SchedulerPlugin) -> Vec<Placement> {
        let (snap, queue, report) = (&self.snap, &self.queue, &mut self.report);
        let health = p.health();
        let refused = |fault| PluginError::new(p.name(), Call::Schedule, fault);
        if health.is_quarantined() {
            health.fallback();
            let (faults, why) = health.quarantine().unwrap_or_default();
            report.fallback_reason = Some(refused(Fault::Quarantined { faults, why }).to_string());
            return native::schedule(snap, queue);
        }
        if let Some(cycles) = health.backing_off() {
            health.fallback();
            report.fallback_reason = Some(refused(Fault::BackingOff { cycles }).to_string());
            return native::schedule(snap, queue);
        }
        let answer = p.schedule(snap, queue).await.and_then(|placements| {
            validate::validate(snap, queue, &placements)
                .map(|()| placements)
                .map_err(|reason| {
                    refused(Fault::InvalidAnswer {
                        reason: Fault::text(reason),
                    })
                })
        });
        let (error, fallback) = match answer {
            Ok(placements) if !placements.is_empty() => {
                health.progress(report.now_s, placements.len(), true);
                health.success();
                report.decided_by = p.name().into();
                return placements;
            }
            // Nothing placed: could the fallback have placed something of this queue?
            Ok(placements) => {
                let native = native::schedule(snap, queue);
                match health.progress(report.now_s, 0, !native.is_empty()) {
                    None => {
                        health.success();
                        report.decided_by = p.name().into();
                        return placements;
                    }
                    Some(fault) => (refused(fault), native),
                }
            }
            Err(e) => (e, native::schedule(snap, queue)),
        };
        tracing::warn!(
            plugin = p.name(),
            call = %error.call,
            fault = error.class(),
            "{error}; native fallback decides this cycle"
        );
        if health.fault(&error.fault) {
            tracing::error!(
                plugin = p.name(),
                reason = health.quarantine().map(|q| q.1).unwrap_or_default(),
                "plugin quarantined; the native fallback decides until it is reloaded"
            );
        }
        health.fallback();
        report.fault = Some(error.class());
        report.fallback_reason = Some(error.to_string());
        fallback
    }

    /// What the strategy that decided this cycle places of the [`Backfill`] left by the guard
    /// holding back placements (`kept` stands): nothing when it has no job, or the strategy's
    /// answer is wrong or faults (a fault counts towards the plugin's quarantine as any other).
    async fn backfill(&mut self, kept: &[Placement], reservation: &Reservation) -> Vec<Placement> {
        let Some(backfill) = Backfill::after(&self.snap, &self.queue, kept, reservation) else {
            return Vec::new();
        };
        let plugin = self
            .plugin
            .clone()
            .filter(|_| self.report.decided_by != native::NAME);
        let invalid = |reason: String| Fault::InvalidAnswer {
            reason: Fault::text(reason),
        };
        let answer = match &plugin {
            None => Ok(native::schedule(&backfill.snapshot, &backfill.queue)),
            Some(p) => (p.schedule(&backfill.snapshot, &backfill.queue).await).map_err(|e| e.fault),
        };
        let checked = answer.and_then(|answer| {
            let mine = backfill.placements(answer).map_err(invalid)?;
            // Beside what stands, on the cycle's own snapshot: a last check.
            let all: Vec<Placement> = kept.iter().chain(&mine).cloned().collect();
            validate::validate(&self.snap, &self.queue, &all).map_err(invalid)?;
            Ok(mine)
        });
        checked.unwrap_or_else(|fault| {
            tracing::warn!(
                decided_by = %self.report.decided_by,
                "the backfill after held-back placements places nothing: {fault}"
            );
            // A fault of the second call counts as any other: reported, towards quarantine.
            if let Some(p) = &plugin {
                let error = PluginError::new(p.name(), Call::Schedule, fault);
                if p.health().fault(&error.fault) {
                    tracing::error!(
                        plugin = p.name(),
                        "plugin quarantined; the native fallback decides until it is reloaded"
                    );
                }
                self.report.fault = Some(error.class());
            }
            Vec::new()
        })
    }

    /// Asks the policy about each placement (`placement.apply`, with the tenant's GPUs held so
    /// far in this cycle) and keeps those it allows. Any evaluation failure refuses the
    /// placement: fail closed. Without a policy every placement stands.
    async fn policy_filter(&mut self, placements: Vec<Placement>) -> Vec<Placement> {
        if self.decider.policy.is_none() {
            return placements;
        }
        let mut held: Vec<u64> = (self.snap.tenants.iter())
            .map(|t| u64::from(t.used_gpus))
            .collect();
        let mut kept = Vec::with_capacity(placements.len());
        for p in placements {
            let t = self.queue.tenant[p.job as usize] as usize;
            let tenant = &self.snap.tenants[t].name;
            let job_id = &self.job_ids[p.job as usize];
            let admission = Admission {
                tenant: tenant.clone(),
                gpus: p.gpus.len() as u64,
                tenant_used_gpus: held[t],
                job: job_id.clone(),
            };
            let request = Request::new(Subject::scheduler(), Action::PlacementApply, admission);
            let verdict = self.decider.authorize(&request).await;
            let (allow, reasons) = match verdict {
                Ok(v) => (v.allow, v.reasons),
                // Unrecordable decisions are not taken.
                Err(e) => (false, vec![e.to_string()]),
            };
            if allow {
                held[t] += p.gpus.len() as u64;
                kept.push(p);
            } else {
                tracing::warn!(
                    job = %job_id,
                    tenant = %tenant,
                    "policy refused a placement: {}",
                    reasons.join("; ")
                );
                self.report.policy_refused.push((job_id.clone(), reasons));
            }
        }
        kept
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::cluster::{Cluster, JobSpec};
    use crate::{Host, HostConfig};

    pub(crate) fn job(id: &str, gpus: u32) -> JobSpec {
        JobSpec::new(id, "tenant-0", gpus, 1_000, 60.0)
    }

    /// The plan keeps queue positions and the jobs' keys; when the queue changed while the
    /// strategy decided (a job cancelled ahead of the others, one submitted), each placement
    /// must land on the job it was decided for, and the cancelled job's on none.
    #[test]
    fn a_cycle_finds_its_jobs_again_by_key_when_the_queue_changed_during_the_decision() {
        let mut host = Host::new(HostConfig::new(Cluster::uniform(1, 2, 8, 1))).unwrap();
        for (id, gpus) in [("a", 2), ("b", 4), ("c", 1)] {
            host.submit(job(id, gpus)).unwrap();
        }
        let plan = host.plan_cycle(0.0);
        let decided = crate::blocking::block_on(plan.decide());
        assert!(host.cancel("a"));
        host.submit(job("d", 8)).unwrap();
        let report = host.apply_cycle(decided);
        let placed: Vec<(&str, usize)> = (report.placements.iter())
            .map(|a| (a.job_id.as_str(), a.gpus.len()))
            .collect();
        assert_eq!(placed, [("b", 4), ("c", 1)], "{report:?}");
        let running: Vec<&str> = (host.state().running.iter())
            .map(|r| r.job_id.as_str())
            .collect();
        assert_eq!(running, ["b", "c"]);
        let pending: Vec<&str> = (host.state().pending.iter())
            .filter(|p| p.remaining > 0)
            .map(|p| p.spec.id.as_str())
            .collect();
        assert_eq!(pending, ["d"]);
    }
}
