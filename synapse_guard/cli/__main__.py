"""`python -m synapse_guard.cli`: the same as the `synapse-guard` command."""

import sys

from synapse_guard.cli.main import main

sys.exit(main())
