import sys

from pigeonpush.cli import main

sys.exit(main())
