import sys

from jconv.cli import main

sys.exit(main())
