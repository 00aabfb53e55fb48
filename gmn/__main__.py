"""``python -m gmn``: the command line without the installed ``gmn`` script (a checkout on PYTHONPATH)."""

from .cli import main

raise SystemExit(main())
