"""`python -m agents ...` runs the agent command line (the same as `gpucp agent ...`)."""

from agents.cli import main

raise SystemExit(main())
