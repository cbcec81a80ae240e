# Tests of gantry.authz, run by `gantry policy test policies` (OPA-style `test_` rules).
package gantry.authz_test

import rego.v1

import data.gantry.authz

researcher := {"user": "ada", "roles": ["researcher"], "tenants": ["vision"], "clearance": "internal"}

admin := {"user": "root", "roles": ["admin"], "tenants": [], "clearance": "secret"}

intern := {"user": "ivy", "roles": ["intern"], "tenants": ["vision"], "clearance": "public"}

submit(subject, tenant, gpus, used) := {
	"subject": subject,
	"action": "job.submit",
	"resource": {"tenant": tenant, "gpus": gpus, "tenant_used_gpus": used},
}

test_member_submits_within_limits if {
	authz.allow with input as submit(researcher, "vision", 64, 100)
}

test_non_member_is_refused if {
	not authz.allow with input as submit(researcher, "language", 8, 0)
	"user ada is not a member of tenant language" in authz.reasons with input as submit(researcher, "language", 8, 0)
}

test_admin_may_use_any_queue if {
	authz.allow with input as submit(admin, "language", 8, 0)
}

test_job_size_is_capped_by_role if {
	not authz.allow with input as submit(intern, "vision", 16, 0)
	authz.allow with input as submit(intern, "vision", 8, 0)
}

test_quota_is_kept if {
	authz.decision == {"allow": false, "reasons": ["tenant vision would hold 513 GPUs, over its quota of 512"]} with input as submit(researcher, "vision", 13, 500)
}

# Found by a review: a refusal told a non-member what another tenant held (its quota less the
# GPUs asked, in one request) and whether it has a quota.
test_a_non_member_learns_nothing_of_a_tenants_quota_or_usage if {
	authz.decision == {"allow": false, "reasons": ["user ada is not a member of tenant language"]} with input as submit(researcher, "language", 8, 1020)
	authz.decision == {"allow": false, "reasons": ["user ada is not a member of tenant research"]} with input as submit(researcher, "research", 1, 0)
}

cancel(subject) := {"subject": subject, "action": "job.cancel", "resource": {"tenant": "vision", "job": "j1"}}

# Found by a review: any member cancelled any job of the tenant, an auditor (who only reads)
# included.
test_only_members_whose_roles_run_jobs_cancel_them if {
	authz.allow with input as cancel(researcher)
	authz.allow with input as cancel(intern)
	authz.allow with input as cancel(admin)
	auditor := {"user": "aud", "roles": ["auditor"], "tenants": ["vision"], "clearance": "public"}
	authz.decision == {"allow": false, "reasons": ["user aud may not cancel jobs (no role of theirs runs jobs)"]} with input as cancel(auditor)
	outsider := object.union(researcher, {"tenants": ["language"]})
	authz.decision == {"allow": false, "reasons": ["user ada is not a member of tenant vision"]} with input as cancel(outsider)
}

test_tenant_without_quota_is_refused if {
	"tenant unknown has no GPU quota" in authz.reasons with input as submit(admin, "unknown", 1, 0)
}

test_unknown_action_is_refused if {
	not authz.allow with input as {"subject": admin, "action": "cluster.delete", "resource": {}}
}

test_request_without_user_is_refused if {
	not authz.allow with input as {"subject": {"roles": ["admin"]}, "action": "audit.read", "resource": {}}
}

exec(subject, tenant) := {
	"subject": subject,
	"action": "job.exec",
	"resource": {"tenant": tenant, "job": "sweep", "program": "torchrun"},
}

runner := {"user": "rae", "roles": ["researcher", "runner"], "tenants": ["vision"], "clearance": "internal"}

test_commands_are_off_without_the_runner_role if {
	authz.decision == {"allow": false, "reasons": ["user ada may not run commands (needs the runner role)"]} with input as exec(researcher, "vision")
}

test_runners_run_commands_in_their_tenants_only if {
	authz.allow with input as exec(runner, "vision")
	authz.decision == {"allow": false, "reasons": ["user rae is not a member of tenant language"]} with input as exec(runner, "language")
	authz.allow with input as exec(admin, "language")
}

heartbeat(subject) := {"subject": subject, "action": "node.heartbeat", "resource": {"node": "node-000"}}

test_only_node_identities_heartbeat if {
	authz.allow with input as heartbeat({"user": "node-000", "roles": ["node"]})
	authz.decision == {"allow": false, "reasons": ["node identity node-001 may not act as node node-000"]} with input as heartbeat({"user": "node-001", "roles": ["node"]})
	authz.decision == {"allow": false, "reasons": ["user root may not act as node node-000 (needs the node role)"]} with input as heartbeat(admin)
}

report(subject) := {"subject": subject, "action": "node.report", "resource": {"node": "node-000"}}

test_only_a_nodes_own_identity_reports_its_runs if {
	authz.allow with input as report({"user": "node-000", "roles": ["node"]})
	authz.decision == {"allow": false, "reasons": ["node identity node-001 may not act as node node-000"]} with input as report({"user": "node-001", "roles": ["node"]})
	authz.decision == {"allow": false, "reasons": ["user root may not act as node node-000 (needs the node role)"]} with input as report(admin)
	authz.decision == {"allow": false, "reasons": ["user rae may not act as node node-000 (needs the node role)"]} with input as report(runner)
}

run_data(subject, placed) := {"subject": subject, "action": "node.data", "resource": {"node": "node-000", "tenant": "vision", "job": "j1", "placed": placed}}

test_a_node_reads_only_the_data_of_runs_placed_on_it if {
	node := {"user": "node-000", "roles": ["node"]}
	authz.allow with input as run_data(node, true)
	authz.decision == {"allow": false, "reasons": ["job vision/j1 has no run on node node-000"]} with input as run_data(node, false)
	authz.decision == {"allow": false, "reasons": ["node identity node-001 may not act as node node-000"]} with input as run_data({"user": "node-001", "roles": ["node"]}, true)
	authz.decision == {"allow": false, "reasons": ["user root may not act as node node-000 (needs the node role)"]} with input as run_data(admin, true)
}

read(subject, label) := {"subject": subject, "action": "dataset.read", "resource": {"name": "scans", "classification": label}}

test_clearance_must_reach_classification if {
	authz.allow with input as read(researcher, "internal")
	not authz.allow with input as read(researcher, "confidential")
	not authz.allow with input as read(researcher, "made-up")
}

test_writing_needs_the_writer_role if {
	write := {"subject": researcher, "action": "dataset.write", "resource": {"name": "scans", "classification": "public"}}
	not authz.allow with input as write
	writer := object.union(researcher, {"roles": ["researcher", "writer"]})
	authz.allow with input as object.union(write, {"subject": writer})
}

load(subject, signed) := {"subject": subject, "action": "plugin.load", "resource": {"name": "binpack", "signed": signed}}

test_only_admins_load_signed_plugins if {
	authz.allow with input as load(admin, true)
	not authz.allow with input as load(admin, false)
	not authz.allow with input as load(researcher, true)
}

upload(subject, signed) := {"subject": subject, "action": "plugin.upload", "resource": {"name": "mine", "signed": signed}}

test_only_admins_upload_signed_plugins if {
	authz.allow with input as upload(admin, true)
	not authz.allow with input as upload(admin, false)
	not authz.allow with input as upload(researcher, true)
}

read_job(subject, tenant) := {"subject": subject, "action": "job.read", "resource": {"tenant": tenant, "job": "j1"}}

test_jobs_are_read_by_their_tenants_members if {
	authz.allow with input as read_job(researcher, "vision")
	not authz.allow with input as read_job(researcher, "language")
	authz.allow with input as read_job(admin, "language")
}

model(subject, tenant, classification) := {"subject": subject, "action": "job.model", "resource": {"tenant": tenant, "job": "j1", "classification": classification}}

test_a_model_is_read_by_members_cleared_for_its_training_data if {
	authz.allow with input as model(researcher, "vision", "internal")
	not authz.allow with input as model(researcher, "language", "public")
	authz.decision == {"allow": false, "reasons": ["job vision/j1 learned from secret data, above the clearance internal of user ada"]} with input as model(researcher, "vision", "secret")
	authz.decision == {"allow": false, "reasons": ["the data job vision/j1 learned from has no known classification"]} with input as model(researcher, "vision", "")
	not authz.allow with input as model({"user": "node-000", "roles": ["node"], "tenants": ["vision"], "clearance": "secret"}, "vision", "public")
}

test_listings_and_the_cluster_are_open_to_named_users if {
	every action in {"job.list", "dataset.list", "cluster.read", "plugin.read", "policy.read"} {
		authz.allow with input as {"subject": researcher, "action": action, "resource": {}}
	}
	not authz.allow with input as {"subject": {"roles": []}, "action": "job.list", "resource": {}}
}

test_host_operations_are_for_admins if {
	every action in {"gpu.health", "node.remove", "policy.replace", "key.rotate", "user.manage"} {
		authz.allow with input as {"subject": admin, "action": action, "resource": {}}
		not authz.allow with input as {"subject": researcher, "action": action, "resource": {}}
	}
}

remove(subject) := {"subject": subject, "action": "node.remove", "resource": {"node": "node-9"}}

test_a_node_is_removed_by_admins_not_by_itself if {
	authz.allow with input as remove(admin)
	not authz.allow with input as remove({"user": "node-9", "roles": ["node"], "tenants": ["vision"]})
	not authz.allow with input as remove(researcher)
}

audit(subject) := {"subject": subject, "action": "audit.read", "resource": {}}

test_audit_log_is_for_admins_and_auditors if {
	authz.allow with input as audit(admin)
	authz.allow with input as audit(object.union(researcher, {"roles": ["auditor"]}))
	not authz.allow with input as audit(researcher)
}

place(tenant, gpus, used) := {
	"subject": {"user": "gantry-scheduler", "roles": ["scheduler"]},
	"action": "placement.apply",
	"resource": {"tenant": tenant, "gpus": gpus, "tenant_used_gpus": used},
}

test_placements_keep_the_quota if {
	authz.allow with input as place("robotics", 28, 100)
	authz.decision == {"allow": false, "reasons": ["placing 29 GPUs would give tenant robotics 129, over its quota of 128"]} with input as place("robotics", 29, 100)
	authz.allow with input as place("no-quota-here", 4096, 0)
}

test_a_node_identity_does_only_a_nodes_work if {
	node := {"user": "node-000", "roles": ["node"], "tenants": ["vision"], "clearance": "public"}
	authz.decision == {"allow": false, "reasons": ["node identity node-000 acts only as its node (job.list is not a node's action)"]} with input as {"subject": node, "action": "job.list", "resource": {}}
	authz.decision == {"allow": false, "reasons": ["node identity node-000 acts only as its node (job.read is not a node's action)"]} with input as {"subject": node, "action": "job.read", "resource": {"tenant": "vision", "job": "j1"}}
	"node identity node-000 acts only as its node (job.cancel is not a node's action)" in authz.reasons with input as {"subject": node, "action": "job.cancel", "resource": {"tenant": "vision"}}
	authz.allow with input as heartbeat(node)
}
