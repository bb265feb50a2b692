"""scripts/critest_report.py: ginkgo JSON reports from critest into the side-by-side table.

The fixtures in tests/fixtures/critest are small reports written by hand in
the shape critest v1.33 (ginkgo v2) writes: a BeforeSuite, specs that pass,
fail, time out, skip themselves, are left out by a focus, share their text
with another spec, and the ReportAfterSuite node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/fixtures/critest"




cr = load_script("critest_report.py", "critest_report")

CREATE = ("[k8s.io] Container runtime runtime should support basic operations on container "
          "runtime should support creating container [Conformance]")
STOP = ("[k8s.io] Container runtime runtime should support basic operations on container "
        "runtime should support stopping container [Conformance]")
SECCOMP = ("[k8s.io] Security Context SeccompProfile should support seccomp localhost "
           "profile on the container")
SECCOMP_1 = f"{SECCOMP} (pkg/validate/security_context.go:1001)"
SECCOMP_2 = f"{SECCOMP} (pkg/validate/security_context.go:1040)"
HOSTPORT = ("[k8s.io] Networking runtime should support networking runtime should support "
            "port mapping with host port and container port [Conformance]")
DNS = ("[k8s.io] Networking runtime should support networking runtime should support "
       "DNS config [Conformance]")
RRO = ("[k8s.io] Container runtime runtime should support basic operations on container "
       "runtime should support recursive readonly mounts")
DIGEST = ("[k8s.io] Container runtime runtime should support basic operations on container "
          "runtime should support image pull by digest")


def _report(handler: str) -> Any:
    return json.loads((FIXTURES / f"ginkgo-{handler}.json").read_text())


@pytest.fixture(scope="module")
def comparison() -> Any:
    return cr.compare({h: cr.parse_report(_report(h)) for h in ("runc", "gvisorgpu")})


@pytest.mark.parametrize(("name", "state", "seconds", "message"), [
    (CREATE, "passed", 0.646, ""),
    (STOP, "passed", 0.706, ""),
    (SECCOMP_1, "passed", 1.5, ""),
    (SECCOMP_2, "passed", 1.25, ""),
    (HOSTPORT, "passed", 2.0, ""),
    (DNS, cr.NOT_RUN, 0.0, ""),  # left out by the focus: skipped with no message
    (RRO, "skipped", 0.01, "Skipping: runtime does not implement recursive readonly mounts"),
    (DIGEST, "failed", 3.0, "rpc error: code = NotFound desc = failed to resolve reference\n"
                            "second line\nthird\nfourth"),
])
def test_parse_reads_each_spec(name: str, state: str, seconds: float, message: str) -> None:
    result = cr.parse_report(_report("runc")).specs[name]
    assert (result.state, result.seconds, result.message) == (state, seconds, message)


def test_message_lines_are_a_parameter() -> None:
    run = cr.parse_report(_report("runc"), message_lines=1)
    assert run.specs[DIGEST].message == (
        "rpc error: code = NotFound desc = failed to resolve reference")


@pytest.mark.parametrize(("message", "reason"), [
    ("", ""),
    ("Skipping: runtime does not implement recursive readonly mounts",
     "Skipping: runtime does not implement recursive readonly mounts"),
    ("Unexpected error:\n    <*status.Error | 0xc0>: \n    rpc error: code = Unknown desc = x\n"
     "    {\n", "rpc error: code = Unknown desc = x"),
    ("Timed out after 60.003s.\nExpected\n    <v1.ContainerState>: 1\nto equal\n",
     "Timed out after 60.003s. Expected <v1.ContainerState>: 1 to equal"),
])
def test_reason_prefers_the_grpc_error(message: str, reason: str) -> None:
    assert cr.SpecResult("x", "failed", message=message).reason == reason


def test_parse_keeps_only_it_nodes_and_their_source_lines() -> None:
    run = cr.parse_report(_report("runc"))
    assert len(run.specs) == 8  # BeforeSuite and ReportAfterSuite are not specs
    assert run.specs[CREATE].location == "pkg/validate/container.go:81"
    assert run.suite_failures == ()
    assert run.seconds == 12.5


def test_parse_reports_a_failed_suite_node() -> None:
    data = _report("runc")
    before = data[0]["SpecReports"][0]
    before.update(State="failed", Failure={"Message": "image pull failed"})
    assert cr.parse_report(data).suite_failures == ("BeforeSuite: image pull failed",)


@pytest.mark.parametrize(("data", "error"), [
    ({"SpecReports": []}, "expected a list of suite reports at the top, got dict"),
    ([{"SuitePath": "/x"}], "suite 0 has no SpecReports list"),
    ([{"SpecReports": [{"LeafNodeType": "It", "LeafNodeText": "x", "State": "weird"}]}],
     "unknown State 'weird' for 'x'"),
])
def test_parse_refuses_what_is_not_a_ginkgo_report(data: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        cr.parse_report(data)


def test_totals_count_ginkgo_failure_kinds_as_failed_and_leave_out_not_run(
        comparison: Any) -> None:
    assert comparison.totals("runc") == {"passed": 5, "failed": 1, "skipped": 1}
    # timedout counts as failed; a spec's own Skip() as skipped.
    assert comparison.totals("gvisorgpu") == {"passed": 3, "failed": 2, "skipped": 2}


def test_differences_in_both_directions(comparison: Any) -> None:
    assert comparison.differences("runc", "gvisorgpu") == [STOP, HOSTPORT, SECCOMP_1]
    assert comparison.differences("gvisorgpu", "runc") == [DIGEST]


def test_render_shows_each_spec_side_by_side_then_totals_and_lists(comparison: Any) -> None:
    text = cr.render(comparison, title="critest on containerd 2.1.9")
    lines = text.splitlines()
    assert lines[0] == "critest on containerd 2.1.9"
    assert lines[1].split() == ["runc", "gvisorgpu", "spec"]
    rows = {line.split(None, 2)[2]: line.split()[:2] for line in lines[3:10]}
    assert rows[STOP] == ["passed", "timedout"]
    assert rows[SECCOMP_1] == ["passed", "failed"]
    assert rows[SECCOMP_2] == ["passed", "passed"]
    assert rows[DIGEST] == ["failed", "passed"]
    assert DNS not in text  # run by neither
    assert "runc: 5 passed, 1 failed, 1 skipped" in lines
    assert "gvisorgpu: 3 passed, 2 failed, 2 skipped" in lines
    diff = lines.index("passes with runc, not with gvisorgpu (3):")
    assert lines[diff + 1:diff + 7] == [
        f"  [timedout in AfterEach] {STOP}",
        "      rpc error: code = DeadlineExceeded desc = context deadline exceeded",
        f"  [skipped] {HOSTPORT}", "      Skipping: not supported here",
        f"  [failed] {SECCOMP_1}", "      Expected <string>: Seccomp:\t0 to contain Seccomp:\t2"]
    assert "passes with gvisorgpu, not with runc (1):" in lines


def test_columns_line_up(comparison: Any) -> None:
    lines = cr.render(comparison).splitlines()
    # Columns: runc (8 wide), gvisorgpu (9 wide), then the spec, two spaces apart.
    assert lines[0] == "runc      gvisorgpu  spec"
    for line in lines[2:9]:
        assert line[8:10] == "  " and line[10] != " ", line
        assert line[19:21] == "  " and line[21] == "[", line


def test_to_json_carries_totals_differences_and_every_result(comparison: Any) -> None:
    data = json.loads(json.dumps(cr.to_json(comparison)))
    assert data["handlers"] == ["runc", "gvisorgpu"]
    assert data["totals"]["gvisorgpu"]["failed"] == 2
    assert data["differences"]["passes with runc, not with gvisorgpu"] == [
        STOP, HOSTPORT, SECCOMP_1]
    stop = next(s for s in data["specs"] if s["name"] == STOP)
    assert stop["results"]["gvisorgpu"] == {
        "state": "timedout", "seconds": 90.0, "location": "pkg/validate/container.go:98",
        "failed_in": "AfterEach", "message": (
            "Unexpected error:\n    <*status.Error | 0xc000286398>: \n"
            "    rpc error: code = DeadlineExceeded desc = context deadline exceeded\n"
            "    {\n        s: {\n            s: {")}
