"""``plan BUNDLE``: what Create would do with a bundle, without running it.

It calls the same :func:`shim.task.create.plan_create` Create calls (kubelet
lookup for a pod's sandbox included) and prints the decision, the reasons, the
spec changes and the exact ``runsc create`` command line.
"""

from __future__ import annotations

import argparse
import json

from shim.commands._host import probe_runsc, with_reaper
from shim.config import RuntimeConfig, load_file
from shim.daemon.reaper import Reaper
from shim.gpu.report import render_json, render_text
from shim.oci import bundle as bundle_io
from shim.oci.layout import PID_FILE
from shim.runsc import CreateOptions, argv
from shim.task.create import CreatePlan, plan_create

__all__ = ["run_plan"]


def run_plan(args: argparse.Namespace) -> int:
    config = load_file(args.config) if args.config else RuntimeConfig()
    bundle = args.bundle.rstrip("/") or "/"
    spec = bundle_io.load_spec(bundle)
    container_id = args.id or bundle.rsplit("/", 1)[-1]

    async def decide(reaper: Reaper) -> CreatePlan:
        caps = await probe_runsc(config.binary_name, reaper)
        return await plan_create(spec, caps, config, container_id=container_id, bundle=bundle,
                                 namespace=args.namespace, sandboxes=None)

    decided = with_reaper(decide)
    command = argv(decided.runsc, CreateOptions(bundle=bundle, pid_file=f"{bundle}/{PID_FILE}"),
                   container_id)
    if args.json:
        print(json.dumps(render_json(decided.plan, original_spec=spec, runsc_argv=command),
                         indent=2))
    else:
        print(render_text(decided.plan, original_spec=spec, runsc_argv=command))
    return 0 if decided.plan.ok else 1
