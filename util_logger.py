"""The scripts' logging, for the tutorial's way of working (``from util_logger import
get_logger`` in a checkout). It lives in the package as ``taskqueue.log``: one line per event
to the console and to ``logs/<script>.log`` in the directory the script runs in."""

from taskqueue.log import LEVELS, get_logger, log_dir

__all__ = ["LEVELS", "get_logger", "log_dir"]
