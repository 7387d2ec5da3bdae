"""``python -m atelier``."""

from atelier.cli import main

main()
