"""The original OET idiom: init binds main's arguments with functools.partial."""

import functools

from pubsub import pub


def init(subarray_id=1, *args, **kwargs):
    global main
    main = functools.partial(_main, subarray_id)


def _main(subarray_id, *args, **kwargs):
    pub.sendMessage(
        "user.script.announce",
        msg_src="rebind_main",
        msg={"subarray_id": subarray_id, "args": list(args), "kwargs": kwargs},
    )
