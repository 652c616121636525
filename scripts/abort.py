"""Abort script run after a stop with abort (device property AbortScript). A real deployment
points this at a script that aborts the subarray through TMC; this one reports what it would do."""

import logging

from pubsub import pub

LOG = logging.getLogger(__name__)
_subarray = None


def init(subarray_id: int = 1, *args, **kwargs):
    global _subarray
    _subarray = subarray_id


def main(*args, **kwargs):
    LOG.warning("aborting activity on subarray %s", _subarray)
    pub.sendMessage("user.script.announce", msg_src=__name__, msg=f"subarray {_subarray} aborted")
