"""``python -m pigeonpush_bench``: the same as ``pigeonpush-bench``."""

import sys

from pigeonpush_bench.cli import main

sys.exit(main())
