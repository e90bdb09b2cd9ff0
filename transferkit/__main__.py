"""``python -m transferkit`` runs the CLI."""

import sys

from transferkit.cli import main

sys.exit(main())
