import sys

from clipatlas.cli import main

sys.exit(main())
