"""`python -m cli`: the same entry as the `hv` console script."""

from cli.entry import main

main()
