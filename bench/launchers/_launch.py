"""What the launchers share: entering the app directory and loading MODULE:CALLABLE."""
import importlib
import os
import sys


def enter(chdir):
    """Work in chdir and import apps from it, as the servers' own --chdir options do."""
    if chdir:
        os.chdir(chdir)
        sys.path.insert(0, chdir)


def load(spec):
    """The object MODULE:CALLABLE names (CALLABLE may be dotted; default `application`)."""
    mod, _, attr = spec.partition(":")
    obj = importlib.import_module(mod)
    for part in (attr or "application").split("."):
        obj = getattr(obj, part)
    return obj
