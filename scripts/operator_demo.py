"""A simulated observation under operator control: pause points between scans, progress,
and questions to the operator.

Run it in the OET (``oet create file://.../operator_demo.py`` then ``oet start``, or through the
REST API) and pause, resume or answer it with ``oet pause``, ``oet resume`` and
``oet answer``; or run it alone (``python scripts/operator_demo.py``): then checkpoints and
progress do nothing and the questions are asked on the terminal (or take their defaults).
"""

import logging
import time

from pubsub import pub

from ska_oso_oet.script import AskTimeout, ask, checkpoint, progress

LOGGER = logging.getLogger(__name__)


def init(subarray_id=1):
    global subarray
    subarray = subarray_id


def main(scans=3, scan_seconds=1.0, confirm_timeout=60.0):
    # A question with choices: the answer is one of them. With a default, a timeout returns it.
    band = ask("Which receiver band?", choices=["1", "2", "5a"], default="2", timeout=30)
    LOGGER.info("observing in band %s on subarray %s", band, subarray)
    for scan in range(1, scans + 1):
        checkpoint()  # an operator's Pause stops the script here, between scans
        pub.sendMessage("user.script.announce", msg_src="operator_demo", msg=f"scan {scan}")
        _scan(scan_seconds)
        progress(scan, scans, f"scan {scan} of {scans} done")
    try:
        # No default: without an answer in time, AskTimeout is raised here.
        park = ask("Park the dishes now?", choices=["yes", "no"], timeout=confirm_timeout)
    except AskTimeout:
        LOGGER.warning("nobody answered; leaving the dishes where they are")
        return
    if park == "yes":
        pub.sendMessage("user.script.announce", msg_src="operator_demo", msg="parking")


def _scan(seconds):
    # A long step with checkpoints inside it, so that a pause does not wait for its end.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        checkpoint()
        time.sleep(min(0.1, seconds))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    init()
    main(scans=2, scan_seconds=0.2, confirm_timeout=5)
