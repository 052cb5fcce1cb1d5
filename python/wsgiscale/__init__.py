"""wsgiscale: a WSGI server whose preloaded, forked CPython workers follow the load.

Run it as ``wsgiscale serve module:app`` or ``python -m wsgiscale serve module:app``; the
app runs in this interpreter's environment. See https://github.com/wsgiscale/wsgiscale.
"""

from wsgiscale._wsgiscale import __version__

__all__ = ["__version__", "main"]


def main(argv=None):
    """Runs the ``wsgiscale`` command line (``sys.argv[1:]`` by default); returns its status."""
    import os
    import signal
    import subprocess
    import sys

    from wsgiscale import _wsgiscale

    if argv is None:
        argv = sys.argv[1:]
    if not sys.executable:
        sys.stderr.write("wsgiscale: sys.executable is empty; cannot start the fork server\n")
        return 1
    # The server handles SIGINT itself; without Python's handler no KeyboardInterrupt is left
    # pending when it returns (and the fork server and workers start as the binary's do).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    interpreter = (
        sys.executable,
        subprocess._args_from_interpreter_flags(),
        sys.prefix,
        os.path.dirname(os.path.abspath(__file__)),
        tuple(sys.version_info[:2]),
    )
    return _wsgiscale.main(["wsgiscale", *argv], interpreter)
