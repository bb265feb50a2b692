"""The long-lived shim process: ``serve`` (ttrpc server, task service, event
publisher), the child ``reaper``, the ``events`` publisher and the logfmt
``log`` setup. Nothing here knows runsc or GPUs; the task service does."""
