# Admission of training containers, as a security team would write it: a deny-list of images,
# digests and capabilities, trusted registries only, mounts and network egress kept inside
# allowed prefixes and ranges, and no secrets in plain environment variables. Every `deny`
# message is one reason; a container is admitted when there is none.
#
# Input: {"user", "image": "registry/path:tag", "digest": "sha256:...",
#         "mounts": [{"path", "read_only"}], "env": [{"name", "value"}],
#         "egress": ["CIDR", ...], "capabilities": ["NAME", ...]}
package samples.images

import rego.v1

default allow := false

allow if count(deny) == 0

decision := {"allow": allow, "reasons": sort([d | some d in deny])}

deny contains "the request names no image" if not is_string(input.image)

# The input's list `field`: empty when absent, or when it is not a list (refused below), so the
# rules that read it never fail on it.
list(field) := value if {
	value := input[field]
	is_array(value)
} else := []

# Lists must be lists, and their entries what the rules read: anything else could hide an entry
# from the rules.
deny contains msg if {
	some field in ["mounts", "env", "egress", "capabilities"]
	not is_array(object.get(input, field, []))
	msg := sprintf("%v must be a list", [field])
}

deny contains msg if {
	some m in list("mounts")
	not is_string(m.path)
	msg := sprintf("mount %v names no path", [m])
}

deny contains msg if {
	some e in list("env")
	not is_string(e.name)
	msg := sprintf("environment entry %v names no variable", [e])
}

deny contains msg if {
	input.user in data.denied_users
	msg := sprintf("user %v may not start containers", [input.user])
}

trusted_registry if {
	some prefix in data.registries
	startswith(input.image, prefix)
}

deny contains msg if {
	is_string(input.image)
	not trusted_registry
	msg := sprintf("image %v is not from a trusted registry", [input.image])
}

deny contains msg if {
	some pattern in data.denied_images
	glob.match(pattern, ["/"], input.image)
	msg := sprintf("image %v is denied (%v)", [input.image, pattern])
}

deny contains msg if {
	not regex.match(`:[A-Za-z0-9._-]+$`, input.image)
	msg := sprintf("image %v has no tag", [input.image])
}

deny contains msg if {
	endswith(input.image, ":latest")
	msg := sprintf("image %v uses the mutable tag latest", [input.image])
}

deny contains msg if {
	input.digest in data.denied_digests
	msg := sprintf("digest %v is denied", [input.digest])
}

deny contains msg if {
	some cap in list("capabilities")
	cap in data.denied_capabilities
	msg := sprintf("capability %v is denied", [cap])
}

# A mount is allowed under one of the prefixes; writable only under a writable one.
mount_allowed(path) if {
	some prefix in data.mounts.readable
	startswith(path, prefix)
}

mount_writable(path) if {
	some prefix in data.mounts.writable
	startswith(path, prefix)
}

deny contains msg if {
	some m in list("mounts")
	not mount_allowed(m.path)
	msg := sprintf("mount %v is outside the allowed prefixes", [m.path])
}

deny contains msg if {
	some m in list("mounts")
	mount_allowed(m.path)
	not m.read_only == true
	not mount_writable(m.path)
	msg := sprintf("mount %v must be read-only", [m.path])
}

# Every egress range lies inside an allowed one.
egress_contained if {
	every range in list("egress") {
		some allowed in data.egress
		net.cidr_contains(allowed, range)
	}
}

deny contains "egress reaches outside the allowed ranges" if not egress_contained

deny contains msg if {
	some e in list("env")
	e.name in data.secret_env
	e.value != ""
	msg := sprintf("secret %v is passed in plain text (use a secret mount)", [e.name])
}
