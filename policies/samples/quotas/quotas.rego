# Tenant quotas for job submissions, as a platform team would write them: each tenant's limits
# in data.json, a default for every limit a tenant does not set, and one reason per refusal.
#
# Input: {"user": {"name", "tenant"},
#         "job": {"gpus", "hours", "priority"},      (gpus 1, hours 1, priority "normal" if absent)
#         "usage": {"gpus", "gpu_hours"}}             (what the tenant holds / used this month)
package samples.quotas

import rego.v1

default allow := false

allow if count(violations) == 0

# What the host records: allowed or not, why not (sorted), and the job's size class.
decision := {
	"allow": allow,
	"reasons": sort([v | some v in violations]),
	"size": size_class(gpus),
}

tenant := input.user.tenant

# A tenant's own limit, else the platform default.
limit(name, field) := value if {
	value := data.tenants[name][field]
} else := data.defaults[field]

# The limits in force for the requesting tenant (shown in refusals, and a rule to test).
limits[field] := limit(tenant, field) if some field in object.keys(data.defaults)

default gpus := 1

gpus := input.job.gpus

default hours := 1

hours := input.job.hours

default priority := "normal"

priority := input.job.priority

# Job sizes: small (one node), medium (a rack), large.
size_class(n) := "small" if n <= 8

size_class(n) := "medium" if {
	n > 8
	n <= 64
}

size_class(n) := "large" if n > 64

violations contains "the request names no tenant" if not is_string(input.user.tenant)

violations contains msg if {
	not data.tenants[tenant]
	msg := sprintf("tenant %v is unknown: the default limits apply", [tenant])
}

violations contains "a job needs at least one GPU" if gpus < 1

violations contains msg if {
	not whole_number(gpus)
	msg := sprintf("the GPU count %v is not a whole number", [gpus])
}

whole_number(n) if {
	is_number(n)
	n == floor(n)
}

violations contains msg if {
	gpus > limits.max_job_gpus
	msg := sprintf("the job asks for %v GPUs; tenant %v allows at most %v per job", [gpus, tenant, limits.max_job_gpus])
}

violations contains msg if {
	held := object.get(input, ["usage", "gpus"], 0) + gpus
	held > limits.gpus
	msg := sprintf("tenant %v would hold %v GPUs, over its quota of %v", [tenant, held, limits.gpus])
}

violations contains msg if {
	hours > limits.max_job_hours
	msg := sprintf("the job runs %v hours; tenant %v allows at most %v", [hours, tenant, limits.max_job_hours])
}

violations contains msg if {
	spent := object.get(input, ["usage", "gpu_hours"], 0) + gpus * hours
	spent > limits.gpu_hours
	msg := sprintf("tenant %v would use %v GPU-hours this month, over its budget of %v", [tenant, spent, limits.gpu_hours])
}

violations contains msg if {
	not data.priorities[priority]
	msg := sprintf("unknown priority %v", [priority])
}

violations contains msg if {
	data.priorities[priority] > data.priorities[limits.max_priority]
	msg := sprintf("tenant %v may not submit at priority %v (at most %v)", [tenant, priority, limits.max_priority])
}
