"""``python -m gmn.cli``: how ``gmn train --nproc N`` relaunches itself under torchrun."""

from . import main

raise SystemExit(main())
