"""``python -m spamfilter.cli``: training runs ``python -m spamfilter.cli export-onnx``."""

import sys

from spamfilter.cli import main

sys.exit(main())
