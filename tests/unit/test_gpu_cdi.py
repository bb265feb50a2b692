"""CDI names, spec documents and resolution (shim.gpu.cdi), plus loading the
fixture directories through shim.gpu.detect.load_cdi_specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shim.gpu.cdi import (
    CdiError,
    QualifiedName,
    known_names,
    parse_qualified_name,
    parse_spec,
    resolve,
)
from shim.gpu.detect import load_cdi_specs

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cdi"
UUID0 = "GPU-4f4c8a2e-1b7d-4c3a-9e51-0a6d2b9c7e10"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nvidia.com/gpu=0", QualifiedName("nvidia.com", "gpu", "0")),
        ("nvidia.com/gpu=all", QualifiedName("nvidia.com", "gpu", "all")),
        (f"nvidia.com/gpu={UUID0}", QualifiedName("nvidia.com", "gpu", UUID0)),
        ("nvidia.com/gpu=0:1", QualifiedName("nvidia.com", "gpu", "0:1")),
        (
            "vendor_1.example-x/class.v2=dev_1.a-b",
            QualifiedName("vendor_1.example-x", "class.v2", "dev_1.a-b"),
        ),
        ("a/b=c", QualifiedName("a", "b", "c")),
    ],
    ids=["index", "all", "uuid", "mig-index", "punctuation", "single-chars"],
)
def test_qualified_name_valid(text: str, expected: QualifiedName) -> None:
    assert parse_qualified_name(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a qualified"),
        ("nvidia.com/gpu", "not a qualified"),
        ("gpu=0", "not a qualified"),
        ("nvidia.com/=0", "not a qualified"),
        ("/gpu=0", "device path"),
        ("/dev/nvidia0", "device path"),
        ("nvidia.com/gpu=", "not a qualified"),
        ("1vendor.com/gpu=0", "invalid vendor"),
        ("nvidia.com-/gpu=0", "invalid vendor"),
        ("nvidia.com/gpu/x=0", "invalid class"),
        ("nvidia.com/-gpu=0", "invalid class"),
        (f"nvidia.com/{'g' * 64}=0", "invalid class"),
        ("nvidia.com/gpu=-0", "invalid device name"),
        ("nvidia.com/gpu=0:", "invalid device name"),
        ("nvidia.com/gpu=a b", "invalid device name"),
        ("nvidia.com/gpu=0=1", "invalid device name"),
    ],
)
def test_qualified_name_invalid(text: str, message: str) -> None:
    with pytest.raises(CdiError, match=message):
        parse_qualified_name(text)


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}}],
    }
    doc.update(over)
    return doc


@pytest.mark.parametrize(
    ("description", "doc", "message"),
    [
        ("not a mapping", ["x"], "must be a mapping"),
        ("missing version", _doc(cdiVersion=None), "cdiVersion"),
        ("too old", _doc(cdiVersion="0.2.0"), "older than 0.3.0"),
        ("kind without class", _doc(kind="nvidia.com"), "not vendor/class"),
        ("bad vendor", _doc(kind="-x/gpu"), "invalid vendor"),
        ("no devices", _doc(devices=[]), "at least one device"),
        ("device without name", _doc(devices=[{"containerEdits": {}}]), "needs a string 'name'"),
        ("device without edits", _doc(devices=[{"name": "0"}]), "no containerEdits"),
        ("bad device name", _doc(devices=[{"name": "-", "containerEdits": {}}]), "invalid device"),
        (
            "duplicate device",
            _doc(devices=[{"name": "0", "containerEdits": {}}] * 2),
            "defined twice",
        ),
        ("unknown edit field", _doc(containerEdits={"sysctls": []}), "unknown containerEdits"),
        ("env not K=V", _doc(containerEdits={"env": ["JUSTNAME"]}), "NAME=value"),
        ("node without path", _doc(containerEdits={"deviceNodes": [{}]}), "string 'path'"),
        (
            "mount without hostPath",
            _doc(containerEdits={"mounts": [{"containerPath": "/x"}]}),
            "hostPath",
        ),
        (
            "unknown hook name",
            _doc(containerEdits={"hooks": [{"hookName": "prestop", "path": "/bin/true"}]}),
            "unknown hookName",
        ),
        ("gids not ints", _doc(containerEdits={"additionalGids": ["44"]}), "integers"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_parse_spec_refuses(description: str, doc: Any, message: str) -> None:
    with pytest.raises(CdiError, match=message):
        parse_spec(doc, path="x.yaml", priority=0)


def test_parse_spec_keeps_edits() -> None:
    spec = parse_spec(
        _doc(containerEdits={"env": ["A=1"], "additionalGids": [44], "intelRdt": {"closID": "x"}}),
        path="/etc/cdi/x.yaml",
        priority=1,
    )
    assert (spec.kind, spec.priority, spec.version) == ("nvidia.com/gpu", 1, "0.5.0")
    assert spec.edits.env == ("A=1",)
    assert spec.edits.additional_gids == (44,)
    assert spec.edits.ignored == ("intelRdt",)
    assert spec.device("0") is not None and spec.device("1") is None


def test_fixtures_load_json_and_yaml() -> None:
    specs, errors = load_cdi_specs([str(FIXTURES / "etc"), str(FIXTURES / "run")])
    assert errors == ()
    assert [Path(s.path).name for s in specs] == ["nvidia.yaml", "nvidia.json"]
    assert [s.priority for s in specs] == [0, 1]
    assert known_names("nvidia.com/gpu", specs) == sorted(
        ["0", "1", "all", UUID0, "GPU-9b0e7d31-52c6-4e8f-b1a4-7c3e5d2f8a61"]
    )


def test_broken_fixtures_are_values_not_exceptions() -> None:
    specs, errors = load_cdi_specs([str(FIXTURES / "broken"), "/nonexistent/cdi"])
    assert specs == ()
    assert len(errors) == 3
    assert any("bad-kind.json" in e and "not vendor/class" in e for e in errors)
    assert any("not-yaml.yaml" in e for e in errors)
    assert any("unknown-field.yaml" in e and "sysctls" in e for e in errors)
    assert all("\n" not in e for e in errors)


def _specs() -> tuple[Any, ...]:
    return load_cdi_specs([str(FIXTURES / "etc"), str(FIXTURES / "run")])[0]


def _name(text: str) -> QualifiedName:
    return parse_qualified_name(text)


@pytest.mark.parametrize(
    ("description", "names", "origins"),
    [
        ("later dir wins", ["nvidia.com/gpu=0"], ["run/nvidia.json", "run/nvidia.json device 0"]),
        (
            "only in the earlier dir",
            ["nvidia.com/gpu=1"],
            ["etc/nvidia.yaml", "etc/nvidia.yaml device 1"],
        ),
        (
            "spec edits once for two devices",
            ["nvidia.com/gpu=1", f"nvidia.com/gpu={UUID0}", "nvidia.com/gpu=1"],
            [
                "etc/nvidia.yaml",
                "etc/nvidia.yaml device 1",
                "run/nvidia.json",
                f"run/nvidia.json device {UUID0}",
            ],
        ),
    ],
)
def test_resolve_order_and_priority(description: str, names: list[str], origins: list[str]) -> None:
    res = resolve([_name(n) for n in names], _specs())
    assert res.ok
    got = [origin.replace(str(FIXTURES) + "/", "") for origin, _ in res.edits]
    assert got == origins


def test_resolve_missing_applies_nothing() -> None:
    res = resolve([_name("nvidia.com/gpu=0"), _name("nvidia.com/gpu=7")], _specs())
    assert not res.ok
    assert res.edits == ()
    assert res.missing == (_name("nvidia.com/gpu=7"),)


def test_resolve_conflict_at_same_priority() -> None:
    one = parse_spec(_doc(), path="/a/one.yaml", priority=0)
    two = parse_spec(_doc(), path="/a/two.yaml", priority=0)
    res = resolve([_name("nvidia.com/gpu=0")], [one, two])
    assert res.conflicts == ((_name("nvidia.com/gpu=0"), ("/a/one.yaml", "/a/two.yaml")),)
    higher = parse_spec(_doc(), path="/b/three.yaml", priority=1)
    assert resolve([_name("nvidia.com/gpu=0")], [one, two, higher]).ok
