"""Asks the operator one question with the arguments given and prints the answer; with
``use_input`` asks through the builtin input() instead."""

from ska_oso_oet.script import AskTimeout, ask


def main(prompt="Continue?", choices=None, default=None, timeout=None, use_input=False, again=0):
    for _ in range(1 + again):
        if use_input:
            answer = input(prompt)
        else:
            try:
                answer = ask(prompt, choices=choices, default=default, timeout=timeout)
            except AskTimeout as exc:
                print(f"timed out: {exc}", flush=True)
                raise
        print(f"answer={answer!r}", flush=True)
