"""`python -m command`, the same as the `suara` script."""

import sys

from cli import main

sys.exit(main())
