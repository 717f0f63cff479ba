"""``python -m pigeonpush_abuse``: the same as the ``pigeonpush-abuse`` command."""

from pigeonpush_abuse.cli import main

raise SystemExit(main())
