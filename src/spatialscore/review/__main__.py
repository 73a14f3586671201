"""``python -m spatialscore.review``: the ``spatialscore review`` command without loading the training stack."""

import sys

from spatialscore.review import cli_main

sys.exit(cli_main())
