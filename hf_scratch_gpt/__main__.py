"""`python -m hf_scratch_gpt ...`: the `hf-scratch-gpt` command line (see `hf_scratch_gpt_cli`)."""

import sys

from hf_scratch_gpt_cli import main

sys.exit(main())
