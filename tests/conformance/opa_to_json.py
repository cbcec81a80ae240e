#!/usr/bin/env python3
"""Convert OPA's YAML conformance cases to the JSON files Gantry's conformance harness reads.

    opa_to_json.py <opa>/v1/test/cases/testdata/v1 <out> [--per-folder K]

Every topic folder under the input gives `<out>/<folder>.json` = {"_notice", "cases": [...]}.
Each case keeps OPA's fields unchanged (`cases.go`'s TestCase) plus `source` (the YAML file's
path under the input, its git blob id, the case's index), so a pin can be re-verified with
`git ls-tree`. `<out>/MANIFEST.json` lists, per folder, the cases seen, eligible, picked and
excluded (with reasons). The output is deterministic: same input, same bytes.

--per-folder K picks, per folder, the K eligible cases with the smallest
sha256("gantry-conformance/1\\0" + folder + "\\0" + note): the seed is fixed, not the OPA commit,
so bumping the pin keeps the earlier picks where the notes still exist.

YAML fidelity: OPA reads these files with go-yaml (YAML 1.1 rules, sigs.k8s.io/yaml); PyYAML
differs at the edges (`y`/`n`, `1e3`, `1:30`, ...). Every plain scalar in data, input and
want_result is resolved both ways; the script aborts on any disagreement instead of guessing.
"""

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import yaml

# OPA's TestCase fields (v1/test/cases/cases.go); anything else aborts.
KNOWN = {
    "note", "query", "modules", "data", "input", "input_term", "want_result",
    "want_error", "want_error_code", "want_defined", "sort_bindings",
    "ignore_generated_vars", "strict_error", "env",
}
# Builtins a sandboxed, deterministic decision engine can never run by design.
OUTSIDE_THE_SANDBOX = ["http.send", "net.lookup_ip_addr", "opa.runtime", "trace", "test.sleep"]
SEED = b"gantry-conformance/1\0"
NOTICE = (
    "Derived from the Open Policy Agent conformance suite (https://github.com/open-policy-agent/opa, "
    "Copyright The OPA Authors, Apache License 2.0; see LICENSE and NOTICE.md next to this file). "
    "Modified by the Gantry authors: converted from YAML to JSON by tests/conformance/opa_to_json.py, "
    "possibly a subset of the cases, and a `source` field added to each case."
)


def git_blob_id(raw: bytes) -> str:
    """The id `git hash-object` gives the file."""
    return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()


GO_TRUE = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE"}
GO_FALSE = {"n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE"}
GO_NULL = {"", "~", "null", "Null", "NULL"}
GO_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


# What go-yaml reads exactly (ParseInt, then ParseUint, 64 bits). Such an integer is kept:
# json.dumps writes its exact digits, and OPA reads JSON numbers exactly (json.Number).
GO_INTS = (-2**63, 2**64 - 1)


def go_yaml_resolve(text: str):
    """What go-yaml v2 (resolve.go) makes of a plain scalar: a JSON-able Python value."""
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    if text in GO_NULL:
        return None
    if text in {".inf", ".Inf", ".INF", "+.inf", "-.inf", ".nan", ".NaN", ".NAN"}:
        raise ValueError("infinity or NaN is not JSON")
    plain = text.replace("_", "")
    if re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO]?[0-7]*|[1-9][0-9]*|0)", plain):
        number = go_int(plain)
        if GO_INTS[0] <= number <= GO_INTS[1]:
            return number
        # Beyond int64 and uint64 go-yaml falls back to a float, or to the text.
        return float(plain) if GO_FLOAT.match(plain) else text
    if GO_FLOAT.match(plain):
        return float(plain)
    return text


def go_int(plain: str) -> int:
    """strconv.ParseInt(plain, 0, 64) as go-yaml calls it (a leading 0 means octal)."""
    sign = -1 if plain.startswith("-") else 1
    digits = plain.lstrip("+-")
    if digits[:2] in ("0x", "0X", "0b", "0B", "0o", "0O"):
        return sign * int(digits, 0)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits, 8)
    return sign * int(digits)


def construct(node):
    """What PyYAML's safe loader makes of one node."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def check_fidelity(node, where: str):
    """Abort when PyYAML and go-yaml would read a plain scalar of `node` differently."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            # Keys stay strings on both sides (sigs.k8s.io/yaml writes bool keys back as
            # their text); only a key that PyYAML would not read as a string is refused.
            if not isinstance(construct(key), str):
                sys.exit(f"{where}: key {key.value!r} is not a string in PyYAML")
            check_fidelity(value, f"{where}.{key.value}")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            check_fidelity(item, f"{where}[{i}]")
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        ours = construct(node)
        theirs = go_yaml_resolve(node.value)
        same = type(ours) is type(theirs) and ours == theirs
        if isinstance(ours, float):
            same = same and not math.isnan(ours) and float(repr(ours)) == ours
        if not same:
            sys.exit(f"{where}: plain scalar {node.value!r} reads as {ours!r} in PyYAML "
                     f"but {theirs!r} in go-yaml; quote it in a copy or exclude the case")


def exclusion(case: dict):
    """Why a case cannot run in a sandboxed decision engine, or None."""
    if "env" in case:
        return "env (process environment)"
    text = case.get("query", "") + "\n".join(case.get("modules") or [])
    for builtin in OUTSIDE_THE_SANDBOX:
        if re.search(r"(?<![\w.])" + re.escape(builtin) + r"\s*\(", text):
            return f"calls {builtin}"
    return None


def read_file(path: Path, root: Path):
    """The cases of one YAML file, each with its `source`, after the schema and fidelity checks."""
    raw = path.read_bytes()
    rel = path.relative_to(root).as_posix()
    doc_node = yaml.compose(raw)
    doc = yaml.safe_load(raw)
    if not isinstance(doc, dict) or set(doc) != {"cases"}:
        sys.exit(f"{rel}: expected a mapping with exactly `cases`")
    case_nodes = dict((k.value, v) for k, v in doc_node.value)["cases"].value
    cases = []
    for index, (case, node) in enumerate(zip(doc["cases"], case_nodes)):
        unknown = set(case) - KNOWN
        if unknown:
            sys.exit(f"{rel} case {index}: unknown fields {sorted(unknown)}")
        for key, value in node.value:
            if key.value in ("data", "input", "want_result"):
                check_fidelity(value, f"{rel} case {index} {key.value}")
        case = dict(case)
        case["source"] = {"path": rel, "blob": git_blob_id(raw), "index": index}
        cases.append(case)
    return cases


def pick_key(folder: str, case: dict) -> bytes:
    return hashlib.sha256(SEED + folder.encode() + b"\0" + case["note"].encode()).digest()


def convert_folder(folder: Path, root: Path, per_folder):
    """The picked cases of one topic folder and its MANIFEST entry."""
    files = sorted(f for f in folder.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file())
    cases = [c for f in files for c in read_file(f, root)]
    excluded, eligible = {}, []
    for case in cases:
        reason = exclusion(case)
        if reason:
            excluded[reason] = excluded.get(reason, 0) + 1
        else:
            eligible.append(case)
    picked = eligible
    if per_folder is not None:
        chosen = sorted(eligible, key=lambda c: pick_key(folder.name, c))[:per_folder]
        picked = [c for c in eligible if any(c is p for p in chosen)]  # keep file order
    entry = {"cases": len(cases), "eligible": len(eligible), "picked": len(picked),
             "excluded": dict(sorted(excluded.items()))}
    return picked, entry


def dump(value) -> str:
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", type=Path, help="<opa>/v1/test/cases/testdata/v1 (or v0)")
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--per-folder", type=int, metavar="K",
                        help="deterministic sample: at most K eligible cases per topic folder")
    args = parser.parse_args()
    root = args.cases.resolve()
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        sys.exit(f"{root}: no topic folders")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {"input": root.name, "per_folder": args.per_folder,
                "seed": SEED.decode().rstrip("\0"), "folders": {}}
    total, size = 0, 0
    for folder in folders:
        picked, entry = convert_folder(folder, root, args.per_folder)
        manifest["folders"][folder.name] = entry
        if not picked:
            continue
        body = {"_notice": NOTICE, "cases": picked}
        if root.name == "v0":
            body["rego_version"] = 0  # Rego v0 syntax: not in OPA's schema, the folder said it
        text = dump(body)
        (args.out / f"{folder.name}.json").write_text(text, encoding="utf-8")
        total, size = total + len(picked), size + len(text.encode())
    manifest["picked"] = total
    (args.out / "MANIFEST.json").write_text(dump(manifest), encoding="utf-8")
    print(f"{total} cases from {len(folders)} folders, {size} bytes of JSON in {args.out}")


if __name__ == "__main__":
    main()
