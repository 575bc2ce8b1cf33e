"""Warren: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged."""

import os

from broker import native

__version__ = "0.1.0"

# Why the hot modules run from their Python sources, or None when they run compiled. Decided
# here, before any of them is imported (broker/native.py).
PURE_REASON = native.select(native.PACKAGE_DIR, os.environ)
