"""Imported before any conftest or test module, so before anything imports the app.

fal-client reads FAL_RUN_HOST and FAL_QUEUE_RUN_HOST once, at import: point both at this
process's loopback stand-in (tests/fakes/fal.py) here, so no test can reach fal itself.
"""

import os

from tests.fakes.fal import queue_host

os.environ["FAL_RUN_HOST"] = os.environ["FAL_QUEUE_RUN_HOST"] = queue_host()
