"""Commands for people: ``plan``, ``doctor``, ``version``."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["run_command"]


def _plan(args: argparse.Namespace) -> int:
    from shim import bundle as bundle_io
    from shim.config import RuntimeConfig, load_file
    from shim.gpu.report import render_json, render_text
    from shim.runsc import probe_sync, resolve_binary
    from shim.task.create import plan_bundle

    config = load_file(args.config) if args.config else RuntimeConfig()
    caps = probe_sync(resolve_binary(config.binary_name))
    spec = bundle_io.load_spec(args.bundle)
    container_id = args.id or args.bundle.rstrip("/").rsplit("/", 1)[-1]
    result = plan_bundle(spec, caps, config, container_id=container_id)
    argv = _runsc_argv(config, caps, result, args.bundle, container_id)
    if args.json:
        print(json.dumps(render_json(result, original_spec=spec, runsc_argv=argv), indent=2))
    else:
        print(render_text(result, original_spec=spec, runsc_argv=argv))
    return 0 if result.ok else 1


def _runsc_argv(config: object, caps: object, result: object, bundle: str,
                container_id: str) -> list[str]:
    from shim.config import RuntimeConfig, resolve_network
    from shim.runsc import CreateOptions, argv
    from shim.task.create import _global_options

    assert isinstance(config, RuntimeConfig)
    network = resolve_network(config.network, result.spec)  # type: ignore[attr-defined]
    opts = _global_options(config, caps, result, namespace="<namespace>",  # type: ignore[arg-type]
                           network=network, container_id=container_id, bundle=bundle)
    return argv(opts, CreateOptions(bundle=bundle, pid_file=f"{bundle}/init.pid"), container_id)


def _doctor(args: argparse.Namespace) -> int:
    from shim.doctor import run_doctor

    return run_doctor(args)


def run_command(argv: list[str]) -> int:
    from shim.errors import RpcError

    parser = argparse.ArgumentParser(
        prog="containerd-shim-gvisorgpu-v1",
        description="containerd shim for gVisor with NVIDIA GPUs (nvproxy).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="show what Create would do with a bundle, without running it")
    p.add_argument("bundle")
    p.add_argument("--config", help="runtime config TOML (the ConfigPath containerd would pass)")
    p.add_argument("--id", help="container id (default: the bundle directory's name)")
    p.add_argument("--json", action="store_true", help="one JSON object, for tools")
    d = sub.add_parser("doctor", help="check this host for gVisor GPU containers")
    d.add_argument("--config", help="runtime config TOML")
    d.add_argument("--containerd-config", help="containerd config.toml to check for the runtime")
    sub.add_parser("version")
    if argv and argv[0] in ("--version", "-h", "--help", "help"):
        argv = ["version"] if argv[0] == "--version" else ["--help"]
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            return _plan(args)
        if args.command == "doctor":
            return _doctor(args)
        from shim.cli import NAME, VERSION

        print(f"{NAME} {VERSION}")
        return 0
    except RpcError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
