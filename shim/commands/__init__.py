"""Commands for people: ``plan`` (what Create would do with a bundle),
``doctor`` (is this host ready) and ``version``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["run_command"]


def _parser() -> argparse.ArgumentParser:
    from shim.about import NAME

    parser = argparse.ArgumentParser(
        prog=NAME, description="containerd shim for gVisor with NVIDIA GPUs (nvproxy).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="show what Create would do with a bundle, without running it")
    p.add_argument("bundle")
    p.add_argument("--config", help="runtime config TOML (the ConfigPath containerd would pass)")
    p.add_argument("--id", help="container id (default: the bundle directory's name)")
    p.add_argument("--namespace", default="default",
                   help="containerd namespace the container would run in (default: default)")
    p.add_argument("--json", action="store_true", help="one JSON object, for tools")
    d = sub.add_parser("doctor", help="check this host for gVisor GPU containers")
    d.add_argument("--config", help="runtime config TOML")
    d.add_argument("--containerd-config", help="containerd config.toml to check for the runtime")
    sub.add_parser("version", help="print the version")
    return parser


def run_command(argv: list[str]) -> int:
    from shim.errors import ShimError

    if argv and argv[0] in ("--version", "help"):
        argv = ["version"] if argv[0] == "--version" else ["--help"]
    args = _parser().parse_args(argv)
    try:
        if args.command == "plan":
            from shim.commands.plan import run_plan

            return run_plan(args)
        if args.command == "doctor":
            from shim.commands.doctor import run_doctor

            return run_doctor(args)
        from shim.about import NAME, VERSION

        print(f"{NAME} {VERSION}")
        return 0
    except ShimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
