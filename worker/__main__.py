"""``python -m serverless.worker HOST:PORT``: same as ``serverless-worker``."""

import sys

from .cli import main

sys.exit(main())
