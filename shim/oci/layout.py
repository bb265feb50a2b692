"""Files the shim keeps in a container's bundle directory.

Create writes them; the ``delete`` action, which gets no runtime options and
may run after the daemon died, reads them back. Both import the names from
here. No imports: ``delete`` loads this on every container teardown.
"""

__all__ = ["PANIC_LOG", "PID_FILE", "RUNSC_LOG", "STATE_FILE"]

# The runsc binary, root and global flags used at Create, as JSON; removed by
# the daemon once runsc has deleted the container ("nothing left to do").
STATE_FILE = "gvisorgpu-shim.json"
# The sandbox process (runsc's --pid-file).
PID_FILE = "init.pid"
# runsc's JSON command log, read back for its own reason when a call fails.
RUNSC_LOG = "runsc.log"
# Where a crashing sandbox writes its Go panic (runsc --panic-log).
PANIC_LOG = "runsc-panic.log"
