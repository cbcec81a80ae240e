#!/usr/bin/env python3
"""Tests of opa_to_json.py (Python 3 and PyYAML): python3 tests/conformance/test_opa_to_json.py"""

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

SCRIPT = Path(__file__).with_name("opa_to_json.py")

CASE = """cases:
- note: {note}
  query: data.test.p = x
  modules:
  - |
    package test
    p := {value}
  want_result:
  - x: {value}
"""


def convert(files: dict):
    """Runs the script on one topic folder holding `files`: (exit code, stderr, cases)."""
    with tempfile.TemporaryDirectory() as tmp:
        topic = Path(tmp, "in", "topic")
        topic.mkdir(parents=True)
        for name, text in files.items():
            (topic / name).write_text(text)
        out = Path(tmp, "out")
        run = subprocess.run([sys.executable, str(SCRIPT), str(topic.parent), str(out)],
                             capture_output=True, text=True)
        written = out / "topic.json"
        cases = json.loads(written.read_text())["cases"] if written.exists() else []
        return run.returncode, run.stderr, cases


class Conversion(unittest.TestCase):
    def test_integers_go_yaml_reads_exactly_are_kept_exactly(self):
        # OPA's bitsshiftleft case: a uint64 beyond 2**53 (go-yaml: ParseUint).
        code, err, cases = convert({"a.yaml": CASE.format(note="big", value=18446744073709551614)})
        self.assertEqual(code, 0, err)
        self.assertEqual(cases[0]["want_result"], [{"x": 18446744073709551614}])
        code, err, cases = convert({"a.yaml": CASE.format(note="low", value=-2**63)})
        self.assertEqual((code, cases[0]["want_result"]), (0, [{"x": -2**63}]), err)

    def test_integers_beyond_64_bits_abort(self):
        # go-yaml reads them as floats, PyYAML as integers.
        code, err, _ = convert({"a.yaml": CASE.format(note="huge", value=2**64)})
        self.assertNotEqual(code, 0)
        self.assertIn("18446744073709551616", err)

    def test_yml_files_are_read_too(self):
        # OPA's casts/test-casts-0828.yml.
        code, err, cases = convert({"a.yaml": CASE.format(note="one", value=1),
                                    "b.yml": CASE.format(note="two", value=2)})
        self.assertEqual(code, 0, err)
        self.assertEqual([c["note"] for c in cases], ["one", "two"])


if __name__ == "__main__":
    unittest.main()
