"""`python -m geovlm`: the command line."""
from .cli import main

raise SystemExit(main())
