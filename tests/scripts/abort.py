"""Example abort script: announces which subarray it aborts."""

from pubsub import pub

_subarray = None


def init(subarray_id=1):
    global _subarray
    _subarray = subarray_id


def main():
    pub.sendMessage("user.script.announce", msg_src="abort", msg=f"aborting subarray {_subarray}")
