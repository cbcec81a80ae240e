# Access to datasets by attributes, as a data-governance team would write it: the subject's
# groups grant labels, each sensitive label asks for an approved purpose, personal data stays in
# its region, and only owners write or share. `access` says how the subject relates to the
# dataset (an `else` chain); every refusal is one reason.
#
# Input: {"subject": {"user", "groups": [..], "purpose", "region"},
#         "dataset": {"name", "owner_group", "shared_with": [..], "labels": [..], "region"},
#         "operation": "read" | "write" | "share"}
package samples.datasets

import rego.v1

default allow := false

allow if count(deny) == 0

decision := {
	"allow": allow,
	"access": access,
	"reasons": sort([d | some d in deny]),
}

groups := {g | some g in input.subject.groups}

access := "owner" if {
	input.dataset.owner_group in groups
} else := "shared" if {
	some g in input.dataset.shared_with
	g in groups
} else := "public" if {
	public
} else := "none"

# The labels the subject's groups may see.
granted := {label | some g in groups; some label in data.groups[g].labels}

# Each label of the dataset with the purposes it allows (labels without rules allow any).
purposes_of := {label: purposes |
	some label in input.dataset.labels
	purposes := object.get(data.labels, [label, "purposes"], ["any"])
}

# Every other reason names the user: without one, none of them could be given.
deny contains "the request names no user" if not is_string(input.subject.user)

deny contains msg if {
	not input.operation in {"read", "write", "share"}
	msg := sprintf("unknown operation %v", [input.operation])
}

deny contains msg if {
	access == "none"
	input.operation == "read"
	msg := sprintf("user %v is neither in the owning group nor one the dataset is shared with", [input.subject.user])
}

deny contains msg if {
	input.operation in {"write", "share"}
	access != "owner"
	msg := sprintf("only the owning group may %v dataset %v", [input.operation, input.dataset.name])
}

deny contains msg if {
	some label in input.dataset.labels
	label != "public"
	not label in granted
	msg := sprintf("no group of user %v is cleared for label %v", [input.subject.user, label])
}

deny contains msg if {
	some label, purposes in purposes_of
	not "any" in purposes
	not input.subject.purpose in purposes
	msg := sprintf("label %v allows only the purposes %v, not %v", [label, purposes, object.get(input.subject, "purpose", "none given")])
}

personal if {
	some label in input.dataset.labels
	data.labels[label].personal
}

same_region if input.subject.region == input.dataset.region

deny contains msg if {
	personal
	not same_region
	regions := [object.get(input.dataset, "region", "unknown"), object.get(input.subject, "region", "unknown")]
	msg := sprintf("personal data of region %v may not be used from region %v", regions)
}

deny contains "personal data may not be shared" if {
	personal
	input.operation == "share"
}

# A dataset whose every label is public: anyone may read it.
public if {
	count(input.dataset.labels) > 0
	every label in input.dataset.labels {
		label == "public"
	}
}
