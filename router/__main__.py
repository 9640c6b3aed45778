"""`python -m router` is `model-router`."""

from router.cli import main

raise SystemExit(main())
