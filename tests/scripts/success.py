"""Completes at once; records its arguments so tests can check what arrived."""

from pubsub import pub

received = {}


def init(*args, **kwargs):
    received["init"] = [list(args), kwargs]


def main(*args, **kwargs):
    received["main"] = [list(args), kwargs]
    pub.sendMessage("user.script.announce", msg_src="success", msg=received)
