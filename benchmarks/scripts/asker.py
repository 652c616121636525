from ska_oso_oet.script import ask


def main(count=10):
    for n in range(count):
        answer = ask(f"question {n}")
        print(f"answered {n} {answer}", flush=True)
