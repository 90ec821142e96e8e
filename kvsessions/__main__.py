import sys

from kvsessions.cli.main import main

sys.exit(main())
