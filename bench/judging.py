"""The judging alone: `admit` timed on the benchmark's bodies, without HTTP, TLS or parsing.

`make bench` runs this in a fresh process (a driver that has held every body and run the
whole benchmark would time it slower than a server runs it) and reads the JSON it prints:

    python -m bench.judging inject-cni validate ...   # {"inject-cni": 84.1, ...} (µs a call)
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Sequence

import orjson

from bench import bodies as bodies_module
from bench.bodies import Body
from webhook.admission import admit, parse_review


def judging_time(body: Body, repeats: int = 5, calls: int | None = None) -> float:
    """µs per call of `admit` on `body`, in this process, against the benchmarked servers'
    policy and namespaces: the judging alone, without HTTP, TLS or the JSON parse (each
    call gets a freshly parsed review, as a request does). The median of `repeats` means,
    after an untimed pass (the interpreter specializes hot code on its first calls), with
    this process's heap frozen out of the garbage collector's sight as `meshgate serve`
    freezes its own (this process holds every body, parsed, which collections would walk)."""
    raw = body.encode()
    if calls is None:  # about as much parsing per repeat as 2,000 calls on a 4 KiB pod
        calls = max(20, 2_000 * 4096 // len(raw))
    context = bodies_module.context()
    gc.collect()
    gc.freeze()
    try:
        for _ in range(calls):
            admit(parse_review(raw), body.endpoint, context)
        means = []
        for _ in range(repeats):
            spent = 0.0
            for _ in range(calls):
                request = parse_review(raw)
                started = time.perf_counter()
                admit(request, body.endpoint, context)
                spent += time.perf_counter() - started
            means.append(spent / calls * 1e6)
    finally:
        gc.unfreeze()
    return statistics.median(means)


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    known = {body.name: body for body in bodies_module.all_bodies()}
    unknown = [name for name in names if name not in known]
    if unknown:
        print(f"unknown bodies: {', '.join(unknown)} (known: {', '.join(known)})",
              file=sys.stderr)  # fmt: skip
        return 2
    sys.stdout.write(orjson.dumps({name: judging_time(known[name]) for name in names}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
