"""erasebench: a benchmark and evaluation suite for concept erasure in text-to-image diffusion models."""

import time as _time

__version__ = "0.1.0"
STARTED = _time.time()  # when this process imported the package: a run's logged wall time counts from here
