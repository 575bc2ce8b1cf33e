"""`python -m broker`: the same as the `warren` console script."""

from broker.cli import main

raise SystemExit(main())
