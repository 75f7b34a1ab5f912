"""`python -m kvmesh.cli`: the `kvmesh` command."""

import sys

from kvmesh.cli import main

sys.exit(main())
