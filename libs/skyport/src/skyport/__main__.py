"""``python -m skyport`` is the ``skyport`` command."""

import sys

from skyport.cli import main

sys.exit(main())
