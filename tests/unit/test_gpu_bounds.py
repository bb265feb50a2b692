"""Bounded, isolated input handling: hostile CDI files, huge env values, long
messages. Each hostile input must cost a bounded amount and affect only itself.
No timing: growth is measured by counting work, and sizes by length."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from shim.gpu import _document, request
from shim.gpu._context import MAX_REFUSALS, Context
from shim.gpu.config import GpuConfig
from shim.gpu.detect import CdiCache, load_cdi_specs, read_gpus
from shim.gpu.facts import GpuInfo, HostFacts, SandboxRole
from shim.gpu.plan import plan
from tests.unit import gpu_hosts

GOOD = gpu_hosts.FIXTURES / "run" / "nvidia.json"
MAX_LINE = 300  # one cdi_errors line, path included (detect._MAX_ERROR)
ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]"
       for i in range(8)]
    + ["cdiVersion: 0.5.0", "kind: nvidia.com/gpu",
       "devices: [{name: *i, containerEdits: {}}]"]
)
HOSTILE = {
    "deep.json": "[" * 200_000 + "]" * 200_000,
    "deep.yaml": "[" * 200_000 + "]" * 200_000,
    "bomb.yaml": ALIAS_BOMB,
    "self.yaml": "&a [*a]",
    "huge.json": json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
                             "devices": [{"name": "x" * (_document.MAX_BYTES + 1)}]}),
    "hookname.json": json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [
        {"name": "0", "containerEdits": {"hooks": [{"path": "/x", "hookName": ["a"]}]}}]}),
    "longname.json": json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
                                 "devices": [{"name": "!" + "y" * 500_000}]}),
    "manykeys.json": json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [
        {"name": "0", "containerEdits": {f"k{i}": 1 for i in range(50_000)}}]}),
}


@pytest.fixture
def cdi_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cdi"
    d.mkdir()
    shutil.copy(GOOD, d / "nvidia.json")
    for name, text in HOSTILE.items():
        (d / name).write_text(text)
    return d


def test_a_hostile_spec_file_affects_only_itself(cdi_dir: Path) -> None:
    specs, errors = load_cdi_specs([str(cdi_dir)])
    assert [Path(s.path).name for s in specs] == ["nvidia.json"]
    failed = sorted(Path(e.partition(":")[0]).name for e in errors)
    assert failed == sorted(HOSTILE)
    assert all(len(e) <= MAX_LINE + 60 for e in errors), [len(e) for e in errors]
    why = {Path(e.partition(":")[0]).name: e for e in errors}
    assert "nested deeper than 64" in why["deep.json"] and "nested deeper" in why["deep.yaml"]
    assert "YAML aliases are expanded" in why["bomb.yaml"]
    assert "refers to a node that contains it" in why["self.yaml"]
    assert f"larger than {_document.MAX_BYTES} bytes" in why["huge.json"]
    assert "unknown hookName ['a']" in why["hookname.json"]
    # Every other container still plans against the good spec.
    host = dataclasses.replace(gpu_hosts.HOST, cdi_specs=specs, cdi_errors=errors)
    result = plan({"annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=0"}}, host, GpuConfig(),
                  container_id="c", sandbox=SandboxRole.standalone())
    assert result.ok, result.refusals
    assert {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0} in (
        result.spec["linux"]["devices"])


def test_refusal_quoting_broken_files_stays_short(cdi_dir: Path) -> None:
    specs, errors = load_cdi_specs([str(cdi_dir)])
    host = dataclasses.replace(gpu_hosts.HOST, cdi_specs=specs, cdi_errors=errors)
    result = plan({"annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=9"}}, host, GpuConfig(),
                  container_id="c", sandbox=SandboxRole.standalone())
    (refusal,) = result.refusals
    assert "spec files that failed to load" in refusal and len(refusal) < 2500


def test_the_cache_parses_a_file_once_until_it_changes(cdi_dir: Path) -> None:
    cache = CdiCache()
    first = cache.load([str(cdi_dir)])
    assert cache.parsed == len(HOSTILE) + 1
    assert cache.load([str(cdi_dir)]) == first
    assert cache.parsed == len(HOSTILE) + 1  # failures are cached too
    (cdi_dir / "deep.json").write_text(GOOD.read_text().replace('"0"', '"7"'))
    os.utime(cdi_dir / "deep.json", ns=(1, 1))
    specs, errors = cache.load([str(cdi_dir)])
    assert cache.parsed == len(HOSTILE) + 2
    assert sorted(Path(s.path).name for s in specs) == ["deep.json", "nvidia.json"]
    (cdi_dir / "bomb.yaml").unlink()
    assert len(cache.load([str(cdi_dir)])[1]) == len(errors) - 1
    # A second directory order changes priority, not the parsed files.
    other = cdi_dir.parent / "other"
    other.mkdir()
    specs = cache.load([str(other), str(cdi_dir)])[0]
    assert {s.priority for s in specs} == {1} and cache.parsed == len(HOSTILE) + 2


@pytest.mark.parametrize(("text", "ok"), [
    ("a: &a [1, 2]\nb: [*a, *a]\n", True),
    ("a: " + "[" * 64 + "]" * 64, False),
    ("a: " + "[" * 62 + "]" * 62, True),
])
def test_document_bounds(text: str, ok: bool) -> None:
    if ok:
        _document.parse_document(text.encode(), json_file=False)
    else:
        with pytest.raises(ValueError, match="nested deeper"):
            _document.parse_document(text.encode(), json_file=False)


def test_read_gpus(tmp_path: Path) -> None:
    for bus, minor, uuid in (("0000:86:00.0", 1, "GPU-b"), ("0000:3b:00.0", 0, "GPU-a")):
        d = tmp_path / "driver/nvidia/gpus" / bus
        d.mkdir(parents=True)
        (d / "information").write_text(
            f"Model: \t\t Tesla T4\nGPU UUID: \t {uuid}\nBus Location: \t {bus}\n"
            f"Device Minor: \t {minor}\n")
    (tmp_path / "driver/nvidia/gpus/0000:99:00.0").mkdir()  # no information file
    assert read_gpus(str(tmp_path)) == (GpuInfo("0000:3b:00.0", 0, "GPU-a"),
                                        GpuInfo("0000:86:00.0", 1, "GPU-b"))
    assert read_gpus(str(tmp_path / "none")) == ()


# ---- NVIDIA_VISIBLE_DEVICES with many tokens ----

def _bad_tokens(n: int) -> str:
    return ",".join(f"bad{i}" for i in range(n))


def test_many_visible_devices_tokens_give_one_short_refusal() -> None:
    spec = {"process": {"env": [f"NVIDIA_VISIBLE_DEVICES={_bad_tokens(20_000)}"]},
            "linux": {"devices": [{"path": "/dev/nvidiactl"}]}}
    result = plan(spec, gpu_hosts.HOST, GpuConfig(), container_id="c",
                  sandbox=SandboxRole.standalone())
    (refusal,) = [r for r in result.refusals if "NVIDIA_VISIBLE_DEVICES" in r]
    assert "20000 entries 'bad0', 'bad1'" in refusal and "and 19995 more" in refusal
    assert len(refusal) < 600 and result.bad_input
    assert sum(len(r) for r in result.refusals) < 5000


@pytest.mark.parametrize("n", [10_000, 20_000])
def test_visible_devices_parsing_is_linear(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each token is classified once: the work grows with the count, not its square."""
    calls = 0
    real = request._is_device_id

    def counting(token: str) -> bool:
        nonlocal calls
        calls += 1
        return real(token)

    monkeypatch.setattr(request, "_is_device_id", counting)
    value = ",".join(f"{_bad_tokens(n // 2)},{','.join(str(i) for i in range(n // 2))}"
                     .split(","))
    visible, errors = request.parse_visible_devices([value], cdi_hook=False)
    assert calls == n
    assert len(visible.ids) == n // 2 and len(errors) == 1


def test_a_long_cdi_annotation_gives_bounded_text() -> None:
    names = ",".join(f"nvidia.com/gpu={i}" for i in range(20_000))
    bad = ",".join("nvidia.com/gpu" for _ in range(20_000))
    for value, fragment in ((names, "and 19995 more"), (bad, "and 19999 more bad names")):
        result = plan({"annotations": {"cdi.k8s.io/x": value}}, gpu_hosts.HOST, GpuConfig(),
                      container_id="c", sandbox=SandboxRole.standalone())
        texts = [*result.refusals, *result.decision.reasons]
        assert any(fragment in t for t in texts), texts
        assert sum(len(t) for t in texts) < 6000


def test_refusals_are_capped() -> None:
    ctx = Context(spec={}, host=HostFacts(), config=GpuConfig(), container_id="c",
                  role=SandboxRole.standalone())
    for i in range(MAX_REFUSALS + 7):
        ctx.refuse(f"cause {i} " + "x" * 5000, "fix")
    assert len(ctx.refusals) == MAX_REFUSALS and ctx.dropped_refusals == 7
    assert all(len(r) < 1200 for r in ctx.refusals)
