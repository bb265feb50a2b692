"""``python3 -m gpusmoke make|install ...``: see ``gpusmoke.kit``."""

import sys

from gpusmoke.kit import main

sys.exit(main())
