"""The OCI bundle: its spec (``bundle``), the files the shim keeps beside it
(``layout``), rootfs mounts (``mount``), identifier checks (``ids``) and
runsc's files in its root (``runsc_root``)."""
