"""`python -m rmu.attack` (rmu/attack/cli.py)."""

from rmu.attack.cli import main

main()
