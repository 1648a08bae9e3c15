"""`python -m vlbridge` (and `torchrun -m vlbridge`) runs the CLI."""

import sys

from vlbridge.cli.main import main

sys.exit(main())
