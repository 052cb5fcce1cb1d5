"""An app whose import takes SLOW_IMPORT_SECONDS (default 20): a large Django project's
start-up, for the admin port's answers while the app imports. When the import ends it creates
the file named by SLOW_IMPORT_DONE, if set, so a test can tell the import is still running."""

import os
import time

time.sleep(float(os.environ.get("SLOW_IMPORT_SECONDS", "20")))

_done = os.environ.get("SLOW_IMPORT_DONE")
if _done:
    with open(_done, "w") as f:
        f.write("imported\n")


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"imported\n"]
