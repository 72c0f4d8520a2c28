import sys

from multilevel.cli import main

sys.exit(main())
