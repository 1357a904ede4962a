"""`python -m suara.cli`, the same as the `suara` script."""

import sys

from suara.cli import main

sys.exit(main())
