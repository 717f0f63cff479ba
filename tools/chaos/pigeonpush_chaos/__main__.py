"""``python -m pigeonpush_chaos``: the same as ``pigeonpush-chaos``."""

from pigeonpush_chaos.cli import main

main()
