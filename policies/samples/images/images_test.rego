package samples.images_test

import rego.v1

import data.samples.images

trainer := {
	"user": "ada",
	"image": "registry.internal/vision/trainer:1.4",
	"digest": "sha256:0000000000000000000000000000000000000000000000000000000000000001",
	"mounts": [{"path": "/data/vision", "read_only": true}, {"path": "/scratch/ada", "read_only": false}],
	"env": [{"name": "EPOCHS", "value": "10"}, {"name": "HF_TOKEN", "value": ""}],
	"egress": ["10.1.0.0/16"],
	"capabilities": [],
}

with_fields(fields) := object.union(trainer, fields)

test_a_clean_trainer_is_admitted if {
	images.decision == {"allow": true, "reasons": []} with input as trainer
}

test_only_trusted_registries if {
	images.deny == {"image docker.io/someone/miner:1.0 is not from a trusted registry"} with input as with_fields({"image": "docker.io/someone/miner:1.0"})
}

test_denied_image_patterns_match_by_path_segment if {
	images.deny == {"image registry.internal/legacy/old:2 is denied (registry.internal/legacy/*)"} with input as with_fields({"image": "registry.internal/legacy/old:2"})
	images.allow with input as with_fields({"image": "registry.internal/legacy-free/new:2"})
	"image ghcr.io/gantry-ai/trainer-debug:3 is denied (*/*/*-debug:*)" in images.deny with input as with_fields({"image": "ghcr.io/gantry-ai/trainer-debug:3"})
}

test_images_need_an_immutable_tag if {
	images.deny == {"image registry.internal/vision/trainer has no tag"} with input as with_fields({"image": "registry.internal/vision/trainer"})
	images.deny == {"image registry.internal/vision/trainer:latest uses the mutable tag latest"} with input as with_fields({"image": "registry.internal/vision/trainer:latest"})
}

test_denied_users_digests_and_capabilities if {
	images.deny == {
		"user mallory may not start containers",
		"digest sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 is denied",
		"capability SYS_ADMIN is denied",
	} with input as with_fields({
		"user": "mallory",
		"digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"capabilities": ["CHOWN", "SYS_ADMIN"],
	})
}

test_mounts_stay_under_allowed_prefixes_and_write_only_to_scratch if {
	images.deny == {
		"mount /etc is outside the allowed prefixes",
		"mount /models/llm must be read-only",
	} with input as with_fields({"mounts": [{"path": "/etc", "read_only": true}, {"path": "/models/llm"}]})
}

test_every_egress_range_must_be_inside_an_allowed_one if {
	images.allow with input as with_fields({"egress": ["10.0.0.0/8", "192.168.7.0/24"]})
	images.allow with input as with_fields({"egress": []})
	images.deny == {"egress reaches outside the allowed ranges"} with input as with_fields({"egress": ["10.0.0.0/8", "0.0.0.0/0"]})
}

test_secrets_are_not_passed_in_plain_environment_variables if {
	images.deny == {"secret WANDB_API_KEY is passed in plain text (use a secret mount)"} with input as with_fields({"env": [{"name": "WANDB_API_KEY", "value": "k"}]})
}

test_a_request_without_an_image_is_refused if {
	images.decision == {"allow": false, "reasons": ["the request names no image"]} with input as {"user": "ada"}
}

test_malformed_lists_and_entries_are_refused if {
	images.deny == {"capabilities must be a list", "egress must be a list"} with input as with_fields({"capabilities": "SYS_ADMIN", "egress": "0.0.0.0/0"})
	images.deny == {
		"mount /etc names no path",
		"environment entry HF_TOKEN=x names no variable",
	} with input as with_fields({"mounts": ["/etc"], "env": ["HF_TOKEN=x"]})
}
