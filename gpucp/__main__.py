import sys

from gpucp.cli import main

sys.exit(main())
