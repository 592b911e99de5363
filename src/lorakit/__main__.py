"""`python -m lorakit ...` is the `lorakit` command (what `torchrun -m lorakit` runs)."""
import sys

from .cli import main

sys.exit(main())
