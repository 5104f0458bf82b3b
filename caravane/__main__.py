"""``python -m caravane``: the same command as the installed ``caravane``."""

from caravane.cli import main

if __name__ == "__main__":  # not when a helper process imports it
    main()
