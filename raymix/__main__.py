"""``python -m raymix`` is the ``raymix`` command."""
from raymix.cli import main

raise SystemExit(main())
