"""Reports the interpreter's environment: which virtualenv it runs in and what it can import."""

import json
import sys
import sysconfig


def application(environ, start_response):
    base = sysconfig.get_path("purelib", vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
    try:
        import flask  # noqa: F401

        flask_from = sys.modules["flask"].__file__
    except ImportError:
        flask_from = None
    body = json.dumps(
        {
            "prefix": sys.prefix,
            "base_prefix": sys.base_prefix,
            "executable": sys.executable,
            "base_site_packages": base,
            "base_site_visible": base in sys.path,
            "flask": flask_from,
            "path": sys.path,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
