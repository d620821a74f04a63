"""The `hf-scratch-gpt` command line, reachable as `python -m hf_scratch_gpt.cli` (e.g. under torchrun).

Its code is the top-level module `hf_scratch_gpt_cli`, outside this package so that `hf-scratch-gpt --help` answers
without the package import (which loads torch and transformers to register the Auto classes).
"""

import sys

from hf_scratch_gpt_cli import (  # noqa: F401  (the public names of the command line)
    DEBUG_ENVIRONMENT_VARIABLE,
    EXPECTED_ERRORS,
    PROG,
    build_parser,
    describe_error,
    is_expected_error,
    main,
)

if __name__ == "__main__":
    sys.exit(main())
