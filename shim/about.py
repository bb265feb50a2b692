"""What this program is called and which runtime it serves. No imports: every
part, the start path included, may read these."""

__all__ = ["NAME", "RUNTIME", "VERSION"]

NAME = "containerd-shim-gvisorgpu-v1"
VERSION = "0.1.0"
RUNTIME = "io.containerd.gvisorgpu.v1"
