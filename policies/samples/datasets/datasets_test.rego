package samples.datasets_test

import rego.v1

import data.samples.datasets

ask(user, groups, operation, dataset) := {
	"subject": {"user": user, "groups": groups, "purpose": "training", "region": "eu"},
	"dataset": dataset,
	"operation": operation,
}

chats := {
	"name": "support-chats",
	"owner_group": "language-team",
	"shared_with": ["vision-team"],
	"labels": ["internal", "text", "pii"],
	"region": "eu",
}

photos := {"name": "photos", "owner_group": "vision-team", "labels": ["internal", "images"], "region": "us"}

test_owners_read_write_and_share if {
	datasets.decision == {"allow": true, "access": "owner", "reasons": []} with input as ask("lee", ["language-team"], "write", chats)
	datasets.allow with input as ask("ada", ["vision-team"], "share", photos)
}

test_access_is_an_else_chain if {
	datasets.access == "owner" with input as ask("lee", ["language-team", "vision-team"], "read", chats)
	datasets.access == "shared" with input as ask("ada", ["vision-team"], "read", chats)
	datasets.access == "none" with input as ask("ivy", ["contractors"], "read", chats)
}

test_a_shared_group_still_needs_every_label if {
	datasets.deny == {
		"no group of user ada is cleared for label pii",
		"no group of user ada is cleared for label text",
	} with input as ask("ada", ["vision-team"], "read", chats)
}

test_only_owners_write if {
	datasets.deny == {"only the owning group may write dataset photos"} with input as ask("lee", ["language-team", "health-research"], "write", object.union(photos, {"labels": ["internal"]}))
}

test_strangers_are_refused if {
	"user ivy is neither in the owning group nor one the dataset is shared with" in datasets.deny with input as ask("ivy", ["contractors"], "read", photos)
}

test_labels_ask_for_an_approved_purpose if {
	medical := {"name": "scans", "owner_group": "health-research", "labels": ["medical"], "region": "eu"}
	datasets.deny == {`label medical allows only the purposes ["research"], not training`} with input as ask("doc", ["health-research"], "read", medical)
	research := object.union(ask("doc", ["health-research"], "read", medical), {"subject": {"purpose": "research"}})
	datasets.allow with input as research
}

test_personal_data_stays_in_its_region if {
	us := object.union(chats, {"region": "us"})
	datasets.deny == {"personal data of region us may not be used from region eu"} with input as ask("lee", ["language-team"], "read", us)
	no_region := {"subject": {"user": "lee", "groups": ["language-team"], "purpose": "training"}, "dataset": chats, "operation": "read"}
	datasets.deny == {"personal data of region eu may not be used from region unknown"} with input as no_region
}

test_personal_data_is_never_shared if {
	datasets.deny == {"personal data may not be shared"} with input as ask("lee", ["language-team"], "share", chats)
}

test_public_datasets_are_readable_by_anyone if {
	open_data := {"name": "mnist", "owner_group": "vision-team", "labels": ["public"], "region": "us"}
	datasets.decision == {"allow": true, "access": "public", "reasons": []} with input as ask("ivy", [], "read", open_data)
	datasets.deny == {"only the owning group may write dataset mnist"} with input as ask("ivy", [], "write", open_data)
	datasets.access == "none" with input as ask("ivy", [], "read", object.union(open_data, {"labels": []}))
}

test_unknown_operations_are_refused if {
	datasets.deny == {"unknown operation delete"} with input as ask("lee", ["language-team"], "delete", chats)
}

test_a_request_without_a_user_is_refused if {
	photos_reader := {"subject": {"groups": ["vision-team"], "purpose": "training", "region": "us"}, "dataset": photos, "operation": "read"}
	datasets.deny == {"the request names no user"} with input as photos_reader
	not datasets.allow with input as {"dataset": photos, "operation": "read"}
}
