"""``python -m bench.world``: build, judge, evaluate and compare ConceptWorlds (the commands live in bench.cli.world)."""

import sys

from bench.cli.world import main

sys.exit(main())
