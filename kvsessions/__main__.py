import sys

from kvsessions.cli import main

sys.exit(main())
