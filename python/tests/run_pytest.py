#!/usr/bin/python3
"""Runs one pytest file for CTest: exit 0 when tests passed, 77 (CTest's SKIP_RETURN_CODE) when
every test was skipped (torch missing, say), pytest's own code otherwise."""

import sys

import pytest


class Outcomes:
    def __init__(self):
        self.passed = self.skipped = self.failed = 0

    def pytest_collectreport(self, report):  # a module skipped whole (pytest.importorskip)
        if report.skipped:
            self.skipped += 1

    def pytest_runtest_logreport(self, report):
        if report.when == "call" and report.passed:
            self.passed += 1
        elif report.skipped:
            self.skipped += 1
        elif report.failed:
            self.failed += 1


def main():
    o = Outcomes()
    code = pytest.main(["-q", "-rs", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[o])
    print(f"run_pytest: {o.passed} passed, {o.skipped} skipped, {o.failed} failed")
    if code in (0, 5) and o.passed == 0 and o.failed == 0 and o.skipped > 0:  # 5: none collected
        return 77
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
