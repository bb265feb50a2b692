"""The pieces behind scripts/gpu-smoke: an offline kit for air-gapped hosts
(``deb``, ``kit``, ``offline``; standard library only, because they run before
any virtual environment exists) and the smoke run itself (``bounded``,
``host``, ``cdi``, ``report``, ``containers``, ``logs``)."""
