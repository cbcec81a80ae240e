# Access control for the Gantry host: who may do what to which resource.
#
# Input: {"subject": {"user", "roles": [..], "tenants": [..], "clearance"},
#         "action": "job.submit" | "job.exec" | "job.cancel" | "job.read" | "job.model" | "job.list" | "dataset.read" |
#                   "dataset.write" | "dataset.list" | "cluster.read" | "gpu.health" | "node.remove" |
#                   "node.heartbeat" | "node.report" | "node.data" | "plugin.read" | "plugin.upload" | "plugin.load" | "plugin.unload" |
#                   "policy.replace" | "policy.read" | "key.rotate" | "user.manage" |
#                   "audit.read" | "placement.apply",
#         "resource": {...}}  (fields per action, below)
# Every refusal adds a human-readable reason; a request is allowed when there is none.
package gantry.authz

import rego.v1

default allow := false

allow if count(reasons) == 0

# The decision the host records: allowed or not, and why not, in a stable order.
decision := {"allow": allow, "reasons": sort([r | some r in reasons])}

roles := {r | some r in input.subject.roles}

is_admin if "admin" in roles

actions := {
	"job.submit", "job.exec", "job.cancel", "job.read", "job.model", "job.list",
	"dataset.read", "dataset.write", "dataset.list",
	"cluster.read", "gpu.health", "node.remove", "node.heartbeat", "node.report", "node.data",
	"plugin.read", "plugin.upload", "plugin.load", "plugin.unload",
	"policy.replace", "policy.read", "key.rotate", "user.manage", "audit.read", "placement.apply",
}

reasons contains msg if {
	not input.action in actions
	msg := sprintf("unknown action %v", [input.action])
}

reasons contains "the request names no user" if {
	not input.subject.user
}

# Jobs (resource: {"tenant", "gpus", "tenant_used_gpus"}): members of the tenant that owns the
# queue, jobs no larger than the subject's largest role allows, the tenant's GPU quota kept.
# Whatever concerns the tenant itself (its quota, what it holds) is said to its members and
# admins only: a refusal told anyone who named a tenant what it held (its quota less the GPUs
# asked).

member(tenant) if is_admin

member(tenant) if tenant in {t | some t in input.subject.tenants}

reasons contains msg if {
	input.action in {"job.submit", "job.exec", "job.cancel", "job.read", "job.model"}
	not member(input.resource.tenant)
	msg := sprintf("user %v is not a member of tenant %v", [input.subject.user, input.resource.tenant])
}

# Cancelling changes a tenant's work: a member whose roles run jobs (an auditor or a writer only
# reads), or an admin.
reasons contains msg if {
	input.action == "job.cancel"
	not is_admin
	max_job_gpus == 0
	msg := sprintf("user %v may not cancel jobs (no role of theirs runs jobs)", [input.subject.user])
}

default max_job_gpus := 0

max_job_gpus := max({data.roles[r].max_job_gpus | some r in roles; data.roles[r]})

reasons contains msg if {
	input.action == "job.submit"
	input.resource.gpus > max_job_gpus
	msg := sprintf("the job asks for %v GPUs; the subject's roles allow at most %v", [input.resource.gpus, max_job_gpus])
}

reasons contains msg if {
	input.action == "job.submit"
	member(input.resource.tenant)
	quota := data.quotas[input.resource.tenant]
	held := object.get(input.resource, "tenant_used_gpus", 0) + input.resource.gpus
	held > quota
	msg := sprintf("tenant %v would hold %v GPUs, over its quota of %v", [input.resource.tenant, held, quota])
}

reasons contains msg if {
	input.action == "job.submit"
	member(input.resource.tenant)
	not data.quotas[input.resource.tenant]
	msg := sprintf("tenant %v has no GPU quota", [input.resource.tenant])
}

# Placements (resource: {"tenant", "gpus", "tenant_used_gpus"}): the host asks before applying each
# placement a scheduler proposed, so the quotas here hold whatever the scheduler plugin decided.
# Tenants without a quota here are bounded by the cluster's own quotas only.

reasons contains msg if {
	input.action == "placement.apply"
	quota := data.quotas[input.resource.tenant]
	held := input.resource.tenant_used_gpus + input.resource.gpus
	held > quota
	msg := sprintf("placing %v GPUs would give tenant %v %v, over its quota of %v", [input.resource.gpus, input.resource.tenant, held, quota])
}

# A succeeded training job's model (job.model, resource: {"tenant", "job", "classification"}): a
# member of its tenant whose clearance reaches the classification of the data it learned from (a
# model can give back what it was trained on), as reading that dataset would need.

reasons contains msg if {
	input.action == "job.model"
	not level(input.resource.classification)
	msg := sprintf("the data job %v/%v learned from has no known classification", [input.resource.tenant, input.resource.job])
}

reasons contains msg if {
	input.action == "job.model"
	not level(input.subject.clearance)
	msg := sprintf("user %v has no known clearance", [input.subject.user])
}

reasons contains msg if {
	input.action == "job.model"
	level(input.resource.classification) > level(input.subject.clearance)
	msg := sprintf("job %v/%v learned from %v data, above the clearance %v of user %v", [input.resource.tenant, input.resource.job, input.resource.classification, input.subject.clearance, input.subject.user])
}

# Command jobs (job.exec, resource: {"tenant", "job", "program"}): a program the user brings, run
# on the GPUs the job is placed on, as the daemon's job user. Asked besides job.submit; off unless
# the subject holds the `runner` role (or is an admin), and only in the subject's own tenants.

reasons contains msg if {
	input.action == "job.exec"
	not is_admin
	not "runner" in roles
	msg := sprintf("user %v may not run commands (needs the runner role)", [input.subject.user])
}

# A node identity does a node's work and nothing else: whatever tenants it was given (a node user
# made a member of every tenant could list, read and cancel their jobs and download their datasets
# with its token), it is no person.
node_actions := {"node.heartbeat", "node.report", "node.data"}

reasons contains msg if {
	"node" in roles
	not input.action in node_actions
	msg := sprintf("node identity %v acts only as its node (%v is not a node's action)", [input.subject.user, input.action])
}

# Node agents (node.heartbeat: its lease and GPUs; node.report: its runs' starts, logs and ends;
# resource: {"node"}): only a node's own identity (the `node` role, named as the node) renews its
# lease, reports its GPUs and its runs; no person, admins included, speaks for a node, and no node
# for another.
# What a run needs (node.data, resource: {"node", "tenant", "job", "placed"}: a job's dataset and
# checkpoints): the node's own identity, and only for a job whose current run was handed to that
# node (`placed`, as the control plane knows it). A node gets no other job's data.

reasons contains msg if {
	input.action in node_actions
	not "node" in roles
	msg := sprintf("user %v may not act as node %v (needs the node role)", [input.subject.user, input.resource.node])
}

reasons contains msg if {
	input.action in node_actions
	"node" in roles
	input.subject.user != input.resource.node
	msg := sprintf("node identity %v may not act as node %v", [input.subject.user, input.resource.node])
}

reasons contains msg if {
	input.action == "node.data"
	input.resource.placed != true
	msg := sprintf("job %v/%v has no run on node %v", [input.resource.tenant, input.resource.job, input.resource.node])
}

# Datasets (resource: {"name", "classification"}): the subject's clearance must reach the
# dataset's classification; writing also needs the writer or admin role.

level(label) := data.clearance_levels[label]

reasons contains msg if {
	input.action in {"dataset.read", "dataset.write"}
	not level(input.resource.classification)
	msg := sprintf("dataset %v has an unknown classification", [input.resource.name])
}

reasons contains msg if {
	input.action in {"dataset.read", "dataset.write"}
	not level(input.subject.clearance)
	msg := sprintf("user %v has no known clearance", [input.subject.user])
}

reasons contains msg if {
	input.action in {"dataset.read", "dataset.write"}
	level(input.resource.classification) > level(input.subject.clearance)
	msg := sprintf("dataset %v is %v, above the clearance %v of user %v", [input.resource.name, input.resource.classification, input.subject.clearance, input.subject.user])
}

reasons contains msg if {
	input.action == "dataset.write"
	not is_admin
	not "writer" in roles
	msg := sprintf("user %v may not write datasets (needs the writer role)", [input.subject.user])
}

# Plugins (resource: {"name", "signed"}): admins only, and only signed plugins are uploaded or
# loaded.

reasons contains "only admins may load or unload plugins" if {
	input.action in {"plugin.load", "plugin.unload"}
	not is_admin
}

reasons contains "only admins may upload plugins" if {
	input.action == "plugin.upload"
	not is_admin
}

reasons contains msg if {
	input.action in {"plugin.upload", "plugin.load"}
	not input.resource.signed == true
	msg := sprintf("plugin %v is not signed by a trusted key", [input.resource.name])
}

# Listings and the cluster's shape (resource: {}): any named user; what a listing shows is
# limited to the user's tenants by the host, by the same membership rule as job.read.

# The host itself (resource: {"gpu"} for gpu.health, {"node"} for node.remove, {"user"} for
# user.manage, {} for policy.replace and key.rotate): admins only. Which policy is in force
# (policy.read) any named user may see.

reasons contains "only admins may change a GPU's health" if {
	input.action == "gpu.health"
	not is_admin
}

reasons contains "only admins may remove a node" if {
	input.action == "node.remove"
	not is_admin
}

reasons contains "only admins may replace the policy" if {
	input.action == "policy.replace"
	not is_admin
}

reasons contains "only admins may rotate the master key" if {
	input.action == "key.rotate"
	not is_admin
}

reasons contains "only admins may manage users and tokens" if {
	input.action == "user.manage"
	not is_admin
}

# The audit log: admins and auditors.

reasons contains "only admins and auditors may read the audit log" if {
	input.action == "audit.read"
	not is_admin
	not "auditor" in roles
}
