import sys

from edgestack.cli import main

sys.exit(main())
