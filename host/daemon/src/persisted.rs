//! State an admin sets through the API that must survive a restart: the access-control policy
//! (`POST /v1/policy`: kept by a [`PolicyStore`], this directory's encrypted store or etcd) and
//! GPU health (`POST /v1/gpus/unhealthy`, `/healthy`: [`crate::accounts::GpuMarks`]). Both are
//! applied at every start, before a request is decided or a job placed.

use std::sync::Arc;

use serde::Serialize;

use crate::policystore::PolicyStore;
use gantry::Host;
use gantry::policy::bundle::Bundle;
use gantry::policy::decide::{LoadedPolicy, PolicyLimits};

/// The settings key naming the store object of the policy bundle an admin installed.
pub const POLICY_OBJECT: &str = "policy.object";
/// The settings key holding that bundle's revision.
pub const POLICY_REVISION: &str = "policy.revision";

/// Which policy decides, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyInForce {
    /// The bundle's revision.
    pub revision: String,
    /// `shipped` (built into the binary) or `installed` (`POST /v1/policy`).
    pub source: &'static str,
    /// The installed bundle's store object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// Reads bundle `bytes` (a `.tar.gz`), within the bundle reader's bounds.
pub fn bundle_from_bytes(bytes: &[u8], origin: &str) -> Result<Bundle, String> {
    gantry::policy::bundle::from_bytes(bytes, std::path::Path::new(origin))
        .map_err(|e| format!("not a policy bundle: {e}"))
}

/// The shipped `gantry.authz` policy, built.
pub fn shipped_policy(host: &Host) -> Result<Arc<LoadedPolicy>, String> {
    let (name, rego, data) = gantry::builtin::AUTHZ_POLICY;
    let source = gantry::policy::source::PolicySource::from_parts(&[(name, rego)], data)
        .map_err(|e| e.to_string())?;
    let entrypoints = vec![gantry::DECISION_ENTRYPOINT.to_string()];
    let bundle = gantry::policy::build(&source, &entrypoints, None).map_err(|e| e.to_string())?;
    super::api::here(host.policy_loader().load(bundle, PolicyLimits::default()))
        .map_err(|e| e.to_string())
}

/// The policy to start with: the one an admin installed, if any, else the shipped one. An
/// installed policy that no longer loads stops the start (failing open to the shipped policy
/// would silently undo the admin's choice) unless `shipped` asks for the shipped one, which then
/// replaces it.
/// Whether `policy` lets the cluster's node identities (`nodes`: its users with the `node` role,
/// each as itself, for its own node) do a node's work: renew its lease (`node.heartbeat`) and
/// report on its runs (`node.report`). A policy that refuses every one of them stops every
/// agent: runs are handed out and never reported started or ended. Checked where agents are
/// on, when the daemon starts and when an admin installs a policy: a policy written before
/// `node.report` existed refuses it as an unknown action (a review's upgrade did). A policy may
/// refuse some node identities (one that lists the nodes it trusts); it is refused only when it
/// refuses them all. No node identity yet: nothing to check.
pub fn lets_nodes_work(policy: &LoadedPolicy, nodes: &[crate::db::User]) -> Result<(), String> {
    use gantry::policy::request::{Action, Request, Resource};
    let mut refused = None;
    for node in nodes {
        let refusal = [Action::NodeHeartbeat, Action::NodeReport]
            .into_iter()
            .find_map(|action| {
                let input =
                    Request::new(node.subject(), action, Resource::node(&node.name)).input();
                let result = super::api::here(policy.evaluate(gantry::DECISION_ENTRYPOINT, &input));
                let (allow, reasons) = gantry::policy::decide::verdict(&result);
                (!allow).then_some((action, reasons))
            });
        match refusal {
            None => return Ok(()),
            Some(r) => {
                refused.get_or_insert((node.name.clone(), r));
            }
        }
    }
    match refused {
        None => Ok(()),
        Some((node, (action, reasons))) => Err(format!(
            "the policy (revision {}) refuses every node identity a node's work: `{action}` for \
             node `{node}` ({}), so agents could not renew their leases or report on their runs; \
             allow it as policies/authz.rego does (`node.report` is a node's report on its runs, \
             decided apart from `node.heartbeat` since this version)",
            policy.revision(),
            reasons.join("; ")
        )),
    }
}

pub fn policy_to_start_with(
    host: &Host,
    policies: &dyn PolicyStore,
    shipped: bool,
) -> Result<(Arc<LoadedPolicy>, PolicyInForce), String> {
    let installed = policies.installed()?;
    if let (Some(kept), false) = (&installed, shipped) {
        let (object, revision) = (&kept.object, &kept.revision);
        let failed = |e: String| {
            format!(
                "the installed policy (revision {revision}, object {object}) does not load: {e}; \
                 start with `gantry up --shipped-policy` to replace it with the shipped policy \
                 (recorded in the audit log), then install a working bundle"
            )
        };
        let bytes = policies.bundle(kept).map_err(failed)?;
        let bundle =
            bundle_from_bytes(&bytes, &format!("policy object {object}")).map_err(failed)?;
        let policy = super::api::here(host.policy_loader().load(bundle, PolicyLimits::default()))
            .map_err(|e| failed(e.to_string()))?;
        let info = PolicyInForce {
            revision: policy.revision().to_string(),
            source: "installed",
            object: Some(object.clone()),
        };
        return Ok((policy, info));
    }
    let policy = shipped_policy(host)?;
    if installed.is_some() {
        policies.forget()?;
        tracing::warn!("the installed policy is replaced by the shipped one (--shipped-policy)");
    }
    let info = PolicyInForce {
        revision: policy.revision().to_string(),
        source: "shipped",
        object: None,
    };
    Ok((policy, info))
}

/// The policy in force on `host`, as [`policy_to_start_with`] describes it.
pub fn policy_in_force(host: &Host, policies: &dyn PolicyStore) -> Result<PolicyInForce, String> {
    let revision = host
        .policy()
        .map(|slot| slot.current().revision().to_string())
        .unwrap_or_default();
    let installed = policies.installed()?.filter(|i| i.revision == revision);
    Ok(PolicyInForce {
        revision,
        source: if installed.is_some() {
            "installed"
        } else {
            "shipped"
        },
        object: installed.map(|i| i.object),
    })
}

/// Marks out of service every GPU an admin marked unhealthy; returns how many. A GPU the
/// cluster no longer has is reported and skipped.
pub fn apply_gpu_health(
    host: &mut Host,
    marks: &dyn crate::accounts::GpuMarks,
) -> Result<usize, String> {
    let mut applied = 0;
    for g in marks.gpu_health().map_err(|e| e.to_string())? {
        if g.healthy {
            continue;
        }
        match host.mark_unhealthy(&g.gpu) {
            Some(_) => applied += 1,
            None => tracing::warn!(
                gpu = %g.gpu,
                "a GPU marked unhealthy is not in the cluster any more; ignored"
            ),
        }
    }
    Ok(applied)
}
