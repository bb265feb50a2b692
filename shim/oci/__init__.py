"""The OCI bundle: its spec (``bundle``), the files the shim keeps beside it
(``layout``), rootfs mounts (``mount``) and identifier checks (``ids``)."""
