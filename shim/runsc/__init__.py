"""A typed wrapper of the ``runsc`` command line.

Three layers, one private module each, re-exported here:

* ``_options``: argv builders. :class:`GlobalOptions` and one frozen options
  class per subcommand, each with a pure ``args()``; flag spellings are module
  constants. Global flags go *before* the subcommand (runsc parses them there).
* ``_runner`` / ``_errors``: :class:`Runsc`, one ``async`` method per
  subcommand. Every child goes through the :class:`CommandRunner` it is given
  (the daemon's reaper, which owns ``waitpid``). Failures raise
  :class:`RunscError`, whose message is runsc's own last error read back from
  its JSON log rather than "exit status 128".
* ``_probe``: :func:`probe`, what a given binary supports (``runsc flags``,
  ``--version``, ``help``, ``nvproxy list-supported-drivers``), cached per
  binary file by a :class:`ProbeCache`, and :func:`check_flags` to refuse what
  it does not know.

Facts checked against Debian's 0.0~20221219 and 0.0~20240729 builds:

* ``runsc wait`` prints ``{"id":"c","exitStatus":N}`` and N is already
  128+signal for a signalled process (SIGKILL gives 137), as containerd wants.
* ``runsc wait`` only works while the sandbox still runs: once the root
  container has exited it fails with "sandbox no longer running and its exit
  status is unavailable" (also when called before ``start``). The sandbox
  process itself exits with the same code (``exit(137)``, not by a signal),
  so a subreaper that reaps the ``--pid-file`` pid has the code anyway.
* runsc's JSON log holds records with *no* separator between them, so the log
  is parsed as a stream of JSON values, not as lines.
* Neither build has ``update``; ``nvproxy`` exists only in 20240729.
"""

from shim.runsc._errors import RunscError, last_error_message
from shim.runsc._features import features
from shim.runsc._options import (
    FLAG_PANIC_LOG,
    FLAG_SINCE,
    NETWORKS,
    CheckpointOptions,
    CreateOptions,
    DeleteOptions,
    EventsOptions,
    ExecOptions,
    GlobalOptions,
    KillOptions,
    Network,
    PauseOptions,
    PsOptions,
    ResumeOptions,
    StartOptions,
    StateOptions,
    Subcommand,
    WaitOptions,
    argv,
)
from shim.runsc._probe import (
    DEFAULT_PROBE_CACHE,
    ProbeCache,
    RunscCapabilities,
    RunscNotFound,
    UnsupportedFlag,
    check_flags,
    parse_flags,
    parse_spec_version,
    parse_subcommands,
    parse_version,
    probe,
    resolve_binary,
)
from shim.runsc._runner import (
    CommandResult,
    CommandRunner,
    ContainerState,
    ExecStarted,
    Runsc,
    Stdio,
)

__all__ = [
    "DEFAULT_PROBE_CACHE",
    "FLAG_PANIC_LOG",
    "FLAG_SINCE",
    "NETWORKS",
    "CheckpointOptions",
    "CommandResult",
    "CommandRunner",
    "ContainerState",
    "CreateOptions",
    "DeleteOptions",
    "EventsOptions",
    "ExecOptions",
    "ExecStarted",
    "GlobalOptions",
    "KillOptions",
    "Network",
    "PauseOptions",
    "ProbeCache",
    "PsOptions",
    "ResumeOptions",
    "Runsc",
    "RunscCapabilities",
    "RunscError",
    "RunscNotFound",
    "StartOptions",
    "StateOptions",
    "Stdio",
    "Subcommand",
    "UnsupportedFlag",
    "WaitOptions",
    "argv",
    "check_flags",
    "features",
    "last_error_message",
    "parse_flags",
    "parse_spec_version",
    "parse_subcommands",
    "parse_version",
    "probe",
    "resolve_binary",
]
