"""P6: announces ``count`` numbered messages as fast as it can."""

from pubsub import pub


def main(count=20000):
    for i in range(count):
        pub.sendMessage("user.script.announce", msg_src="announce", msg=i)
