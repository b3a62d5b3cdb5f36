"""`python -m rmu.attack` (rmu/attack/cli.py)."""

import sys

from rmu.attack.cli import main
from rmu.config.overrides import check_command_line

check_command_line("attack", sys.argv[1:])  # one sentence for the mistakes Hydra answers with a traceback
main()
