"""`python -m router` is `model-router`."""

from router.cli import main

# Guarded: worker processes are spawned, and spawning imports the parent's __main__ again.
if __name__ == "__main__":
    raise SystemExit(main())
