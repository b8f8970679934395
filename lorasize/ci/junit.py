"""JUnit XML for ``lorasize check --junit``: one testcase per scenario, a failure for each that
failed.

CI servers (Jenkins, GitLab, GitHub test reporters) read the Ant/Surefire JUnit format; the
schema they validate against is Jenkins xunit-plugin's ``junit-10.xsd`` (the one pytest tests
its own ``--junitxml`` against). Two of its rules shape what is written here: a testcase may
hold ``failure``, ``skipped``, ``system-out`` and ``system-err`` (not ``error``), and the
suite's ``time`` has at most three decimals.
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict
from datetime import datetime, timezone
from xml.etree import ElementTree as ET

from .check import CheckResult, render_table
from ..files import write_atomic


def junit_xml(result: CheckResult, seconds: float = 0.0) -> str:
    """The JUnit XML document of a check's result."""
    by_scenario: OrderedDict[str, list] = OrderedDict()
    for scenario in result.measured:  # file order, not failing-first
        by_scenario[scenario] = []
    for row in result.rows:
        by_scenario.setdefault(row.scenario, []).append(row)
    failures = sum(any(r.failed for r in rows) for rows in by_scenario.values())
    suites = ET.Element("testsuites", name="lorasize check", tests=str(len(by_scenario)),
                        failures=str(failures), errors="0", time=f"{seconds:.3f}")
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"lorasize check {result.path}", "tests": str(len(by_scenario)),
        "failures": str(failures), "errors": "0", "skipped": "0", "time": f"{seconds:.3f}",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": socket.gethostname() or "localhost"})
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="mode", value=result.mode)
    ET.SubElement(properties, "property", name="file", value=result.path)
    for scenario, rows in by_scenario.items():
        case = ET.SubElement(suite, "testcase", name=scenario, classname=f"lorasize.check.{result.mode}",
                             time="0.000")
        failed = [r for r in rows if r.failed]
        if failed:
            message = "; ".join(f"{r.figure} {r.verdict}" + (f" ({r.note})" if r.note else "")
                                for r in failed)
            failure = ET.SubElement(case, "failure", type="MemoryBudgetExceeded", message=message)
            failure.text = render_table(CheckResult(result.path, result.mode, tuple(rows),
                                                    {scenario: result.measured.get(scenario)}))
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(f"{r.figure}={r.value_bytes}" for r in rows)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(path: str, result: CheckResult, started: float | None = None) -> None:
    """Write the JUnit XML of ``result`` to ``path`` atomically."""
    seconds = time.perf_counter() - started if started is not None else 0.0
    write_atomic(path, junit_xml(result, seconds))
