#!/usr/bin/env python3
"""Tests of check.py's verdicts: `python3 conformance/test_check.py` (run by scripts/test.sh)."""
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

CHECK = Path(__file__).with_name("check.py")

EXPECTED = {
    "1.1.1": {"behavior": "OK", "behaviorClose": "OK", "remoteCloseCode": 1000},
    "7.1.6": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL", "remoteCloseCode": 1000},
    "7.13.1": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL", "remoteCloseCode": 1002},
}


class Check(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.expected = self.dir / "expected.json"
        self.expected.write_text(json.dumps(EXPECTED))
        self.retry = self.dir / "retry"

    def tearDown(self):
        self.tmp.cleanup()

    def run_check(self, report, *flags):
        report_dir = self.dir / "report"
        report_dir.mkdir(exist_ok=True)
        (report_dir / "index.json").write_text(json.dumps({"switchyard": report}))
        p = subprocess.run([sys.executable, CHECK, report_dir, self.expected, *map(str, flags)],
                           capture_output=True, text=True)
        return p.returncode, p.stdout

    def changed(self, case, **fields):
        report = json.loads(json.dumps(EXPECTED))
        report[case].update(fields)
        return report

    def test_same_results_pass(self):
        self.assertEqual(self.run_check(EXPECTED, "--retry-list", self.retry)[0], 0)
        self.assertFalse(self.retry.exists())

    def test_a_changed_ok_case_fails_without_retry(self):
        rc, out = self.run_check(self.changed("1.1.1", remoteCloseCode=1002), "--retry-list", self.retry)
        self.assertEqual(rc, 1)
        self.assertIn("REGRESSION 1.1.1", out)
        self.assertFalse(self.retry.exists())

    def test_a_changed_informational_case_is_listed_for_a_retry(self):
        rc, out = self.run_check(self.changed("7.1.6", remoteCloseCode=None), "--retry-list", self.retry)
        self.assertEqual(rc, 3, out)
        self.assertEqual(self.retry.read_text().split(), ["7.1.6"])

    def test_without_retry_list_an_informational_change_fails(self):
        self.assertEqual(self.run_check(self.changed("7.1.6", remoteCloseCode=None))[0], 1)

    def test_an_informational_case_that_became_failed_is_not_retried(self):
        rc, _ = self.run_check(self.changed("7.1.6", behavior="FAILED"), "--retry-list", self.retry)
        self.assertEqual(rc, 1)
        self.assertFalse(self.retry.exists())

    def test_one_non_retryable_difference_fails_the_whole_run(self):
        report = self.changed("7.1.6", remoteCloseCode=None)
        report["1.1.1"]["behavior"] = "NON-STRICT"
        self.assertEqual(self.run_check(report, "--retry-list", self.retry)[0], 1)

    def test_a_missing_case_fails(self):
        report = {k: v for k, v in EXPECTED.items() if k != "1.1.1"}
        rc, out = self.run_check(report, "--retry-list", self.retry)
        self.assertEqual(rc, 1)
        self.assertIn("MISSING case 1.1.1", out)

    def test_subset_checks_only_the_cases_run(self):
        self.assertEqual(self.run_check({"7.1.6": EXPECTED["7.1.6"]}, "--subset")[0], 0)
        rc, out = self.run_check({"7.1.6": self.changed("7.1.6", remoteCloseCode=None)["7.1.6"]}, "--subset")
        self.assertEqual(rc, 1)
        self.assertIn("REGRESSION 7.1.6", out)


if __name__ == "__main__":
    unittest.main()
