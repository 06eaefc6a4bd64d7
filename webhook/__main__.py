"""`python -m webhook` is the `meshgate` command."""

import sys

from .cli import main

sys.exit(main())
