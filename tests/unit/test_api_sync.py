"""shim/api/ is generated from protos/ and must match it; the generated code speaks the wire format.

The envelope bytes are the worked example of the protocol reference (ttrpc, §1.3) and the Go
zero time is from its §2.4; the other timestamp was encoded by hand. None of them was produced by
the code under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import betterproto
import pytest

from shim.api.containerd.task.v2 import ConnectRequest, ConnectResponse, DeleteResponse
from shim.api.google.rpc import Status
from shim.api.ttrpc import KeyValue, Request, Response

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "shim" / "api"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="the generator needs grpcio-tools (dev extra)")
    pytest.importorskip("betterproto.plugin.parser", reason="needs betterproto[compiler]")
    fresh = tmp_path / "api"
    subprocess.run(
        [REPO / "scripts" / "gen-protos", "--out", fresh],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
    )
    want, have = _tree(fresh), _tree(GENERATED)
    stale = sorted(name for name in want.keys() | have.keys() if want.get(name) != have.get(name))
    assert not stale, f"shim/api/ is out of date with protos/ ({stale}); run scripts/gen-protos"


CONNECT_DEMO = ConnectRequest(id="demo")
CONNECT_REQUEST_WIRE = (
    b"\x0a\x17containerd.task.v2.Task"
    b"\x12\x07Connect"
    b"\x1a\x06\x0a\x04demo"
    b"\x2a\x25\x0a\x1acontainerd-namespace-ttrpc\x12\x07default"
)
CONNECT_REPLY = ConnectResponse(shim_pid=1234, task_pid=5678)
CONNECT_RESPONSE_WIRE = bytes.fromhex("1206 08d209 10ae2c")

ENVELOPES = [
    pytest.param(
        Request(
            service="containerd.task.v2.Task",
            method="Connect",
            payload=bytes(CONNECT_DEMO),
            metadata=[KeyValue(key="containerd-namespace-ttrpc", value="default")],
        ),
        CONNECT_REQUEST_WIRE,
        id="request-connect",
    ),
    pytest.param(
        Response(payload=bytes(CONNECT_REPLY)),
        CONNECT_RESPONSE_WIRE,
        id="response-ok",
    ),
    pytest.param(
        Response(status=Status(code=5, message="not found")),
        b"\x0a\x0d\x08\x05\x12\x09not found",
        id="response-not-found",
    ),
]


@pytest.mark.parametrize(("message", "wire"), ENVELOPES)
def test_envelope_encodes_like_reference(message: betterproto.Message, wire: bytes) -> None:
    assert bytes(message) == wire


@pytest.mark.parametrize(("message", "wire"), ENVELOPES)
def test_envelope_decodes_reference(message: betterproto.Message, wire: bytes) -> None:
    assert type(message)().parse(wire) == message


def test_request_length_matches_reference_header() -> None:
    # The reference's frame header announces 0x51 data bytes.
    assert len(CONNECT_REQUEST_WIRE) == 0x51
    assert ConnectRequest().parse(Request().parse(CONNECT_REQUEST_WIRE).payload) == CONNECT_DEMO


def test_success_response_carries_no_status() -> None:
    response = Response().parse(CONNECT_RESPONSE_WIRE)
    assert not betterproto.serialized_on_wire(response.status)
    assert ConnectResponse().parse(response.payload) == CONNECT_REPLY


GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)

TIMESTAMPS = [
    # Go shims send "not exited" as Go's zero time: seconds -62135596800, a 10-byte varint.
    pytest.param(GO_ZERO_TIME, bytes.fromhex("1a0b 08 8092b8c398feffffff01"), id="go-zero"),
    # betterproto omits the Unix epoch (the default); containerd 2.x reads absent as 1970 too.
    pytest.param(datetime(1970, 1, 1, tzinfo=UTC), b"", id="epoch-omitted"),
    pytest.param(
        datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        bytes.fromhex("1a0b 08a5facdac06 108094ef3a"),
        id="microseconds",
    ),
]


@pytest.mark.parametrize(("when", "wire"), TIMESTAMPS)
def test_timestamp_fields_are_datetimes(when: datetime, wire: bytes) -> None:
    assert bytes(DeleteResponse(exited_at=when)) == wire
    assert DeleteResponse().parse(wire).exited_at == when


def test_generated_code_does_not_load_grpclib_server() -> None:
    # gen-protos drops services so the daemon does not pay for grpclib's server (and h2, ssl).
    code = (
        "import sys, shim.api.ttrpc, shim.api.containerd.task.v2, shim.api.containerd.events, "
        "shim.api.containerd.services.events.ttrpc.v1\n"
        "print(sorted(m for m in sys.modules if m.startswith(('grpclib.server', 'h2'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
