"""``python -m minigrpo ...`` is the same as the ``minigrpo`` command."""

from .cli import main

raise SystemExit(main())
