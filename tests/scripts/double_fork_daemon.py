"""A classic daemon: fork, setsid, fork again, the middle process exits so that the daemon is
orphaned; the daemon ignores SIGTERM. Announces the daemon's pid, then loops."""

import os
import signal
import time

from pubsub import pub


def main():
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(write_end, f"{os.getpid()}\n".encode())
            while True:
                signal.pause()
        os._exit(0)
    os.close(write_end)
    daemon = int(os.read(read_end, 64))
    pub.sendMessage(
        "user.script.announce", msg_src="daemon", msg={"worker": os.getpid(), "pids": [daemon]}
    )
    while True:
        time.sleep(0.01)
