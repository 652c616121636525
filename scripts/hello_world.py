"""Smallest useful observing script: announces, logs and prints what it was given.

    oet create file://$PWD/scripts/hello_world.py --subarray_id=1
    oet start --greeting=hi
"""

import logging

from pubsub import pub

LOG = logging.getLogger(__name__)
_subarray = None


def init(subarray_id: int = 1, *args, **kwargs):
    global _subarray
    _subarray = subarray_id
    LOG.info("prepared for subarray %s", subarray_id)


def main(*args, greeting: str = "Hello", **kwargs):
    print(f"{greeting} from subarray {_subarray}; args={list(args)} kwargs={kwargs}")
    pub.sendMessage(
        "user.script.announce", msg_src=__name__, msg=f"{greeting} from subarray {_subarray}"
    )
