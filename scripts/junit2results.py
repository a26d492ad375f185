#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns CTest's JUnit report into make check's result lines.

usage: junit2results.py JUNIT_XML TIER >> RESULTS

Each line is "STATUS<TAB>TIER/NAME<TAB>DETAIL"; for a skipped GoogleTest
case the detail is the reason given to GTEST_SKIP, for a failure the first
failed expectation.
"""
import sys
import xml.etree.ElementTree as ET


def first_after(output, marker):
    """The first line after a line ending with marker in GoogleTest output."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.endswith(marker) and i + 1 < len(lines):
            return lines[i + 1].strip()
    return ""


def main():
    path, tier = sys.argv[1], sys.argv[2]
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        out = case.findtext("system-out") or ""
        if case.find("skipped") is not None or case.get("status") == "notrun":
            why = first_after(out, ": Skipped") or "skipped"
            status = "SKIP"
        elif case.find("failure") is not None or case.get("status") == "fail":
            why = first_after(out, ": Failure") or "failed (see ctest output)"
            status = "FAIL"
        else:
            why, status = "", "PASS"
        print(f"{status}\t{tier}/{name}\t{why}")


if __name__ == "__main__":
    main()
