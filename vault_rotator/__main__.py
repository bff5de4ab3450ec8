"""``python -m vault_rotator`` is ``vault-rotator``."""

import sys

from vault_rotator.cli import main

sys.exit(main())
