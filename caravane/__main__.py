"""``python -m caravane``: the same command as the installed ``caravane``."""

from caravane.cli import main

main()
