"""Announces N numbered messages as fast as it can."""

from pubsub import pub


def main(count=10):
    for i in range(count):
        pub.sendMessage("user.script.announce", msg_src="announce", msg=i)
