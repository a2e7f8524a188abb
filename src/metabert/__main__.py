import sys

from metabert.cli import main

sys.exit(main())
