"""The `farm` command line, one module per command (group).

Each module in this package that defines a click command named ``command`` (or a list
``commands``) is added to the
``farm`` group by ``main.py``; heavy imports (celery, ray, pandas) stay inside the functions so
``farm --help`` is fast.
"""

import signal as _signal
import sys as _sys


def _quiet_interrupt(signum: int, frame: object) -> None:
    _sys.exit(130)


# Ctrl-C while the command is still importing (before main() can catch KeyboardInterrupt) exits 130
# quietly instead of printing an import traceback; main() puts Python's own handler back.
if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _quiet_interrupt)
