"""``python -m hadakron <command>`` (see :mod:`hadakron.cli`)."""

from .cli import main

raise SystemExit(main())
