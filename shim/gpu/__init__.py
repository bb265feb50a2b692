"""GPU planning for runsc with nvproxy.

Public modules (imported by name; this package imports nothing itself, so
``shim.config`` can load ``shim.gpu.config`` without pulling in the planner):

- ``shim.gpu.plan``: ``plan(spec, host, config, *, container_id, sandbox) -> Plan``.
- ``shim.gpu.facts``: ``HostFacts``, ``SandboxRole``, ``Allocation`` (what the
  kubelet allocated to a pod's container) and the runsc release table.
- ``shim.gpu.detect``: ``gather_host_facts`` and ``CdiCache`` - the only module
  here that does IO.

Who may ask for what (a standalone container's spec counts as written; in a
CRI pod only the node's allocation grants GPUs) is shim/gpu/TRUST.md; the planner
applies it in ``_decide`` (signals), ``_trust`` (switches runsc acts on) and
``_grant`` (the kubelet's allocation).
- ``shim.gpu.cdi``: CDI qualified names, spec parsing and resolution.
- ``shim.gpu.request``: the GPU signals a spec carries (``POD_ANNOTATION``).
- ``shim.gpu.report``: ``render_text`` / ``render_json`` for the ``plan`` command.
- ``shim.gpu.doctor``: ``check_host`` rows for the ``doctor`` command.
- ``shim.gpu.config``: ``GpuConfig``; ``shim.gpu.keys``: its TOML key names.

Nothing here imports ``shim.runsc``, ``shim.task`` or ``shim.ttrpc``.
"""
