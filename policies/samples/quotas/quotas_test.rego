package samples.quotas_test

import rego.v1

import data.samples.quotas

job(tenant, gpus, hours, used) := {
	"user": {"name": "ada", "tenant": tenant},
	"job": {"gpus": gpus, "hours": hours},
	"usage": {"gpus": used, "gpu_hours": 0},
}

test_a_job_within_every_limit_is_allowed if {
	quotas.decision == {"allow": true, "reasons": [], "size": "medium"} with input as job("vision", 64, 10, 100)
}

test_a_tenant_setting_wins_over_the_default if {
	quotas.limits.max_job_gpus == 256 with input as job("vision", 1, 1, 0)
	quotas.limits.max_job_hours == 24 with input as job("vision", 1, 1, 0)
}

test_the_quota_counts_what_the_tenant_holds if {
	quotas.violations == {"tenant vision would hold 513 GPUs, over its quota of 512"} with input as job("vision", 1, 1, 512)
}

test_a_job_larger_than_the_tenant_allows_is_refused if {
	msg := "the job asks for 16 GPUs; tenant robotics allows at most 8 per job"
	msg in quotas.violations with input as job("robotics", 16, 1, 0)
	not quotas.allow with input as job("robotics", 16, 1, 0)
}

test_the_monthly_budget_counts_gpu_hours if {
	over := object.union(job("robotics", 8, 20, 0), {"usage": {"gpu_hours": 4900}})
	quotas.violations == {"tenant robotics would use 5060 GPU-hours this month, over its budget of 5000"} with input as over
}

test_an_unknown_tenant_gets_the_defaults_and_no_gpus if {
	quotas.violations == {
		"tenant ghost is unknown: the default limits apply",
		"tenant ghost would hold 1 GPUs, over its quota of 0",
		"tenant ghost would use 1 GPU-hours this month, over its budget of 0",
	} with input as job("ghost", 1, 1, 0)
}

test_missing_fields_take_their_defaults if {
	quotas.decision == {"allow": true, "reasons": [], "size": "small"} with input as {"user": {"tenant": "language"}}
}

test_a_request_without_a_tenant_is_refused if {
	quotas.violations == {"the request names no tenant"} with input as {"user": {"name": "ada"}, "job": {"gpus": 1}}
}

test_priority_is_capped_per_tenant if {
	urgent := object.union(job("vision", 1, 1, 0), {"job": {"priority": "urgent"}})
	quotas.violations == {"tenant vision may not submit at priority urgent (at most high)"} with input as urgent
	quotas.allow with input as object.union(urgent, {"user": {"tenant": "language"}})
}

test_an_unknown_priority_is_refused if {
	quotas.violations == {"unknown priority asap"} with input as object.union(job("vision", 1, 1, 0), {"job": {"priority": "asap"}})
}

test_a_job_needs_a_gpu if {
	"a job needs at least one GPU" in quotas.violations with input as job("vision", 0, 1, 0)
}

test_gpus_come_whole if {
	quotas.violations == {"the GPU count 2.5 is not a whole number"} with input as job("vision", 2.5, 1, 0)
	quotas.allow with input as job("vision", 2.0, 1, 0)
}

test_size_classes if {
	quotas.size_class(8) == "small"
	quotas.size_class(9) == "medium"
	quotas.size_class(64) == "medium"
	quotas.size_class(65) == "large"
}
