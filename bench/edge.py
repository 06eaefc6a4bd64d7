"""meshgate without its judging: a measuring instrument for the benchmark, not a product.

`meshgate serve` in every respect (the same command line, app, server, TLS, log line and
metrics) except that `admit` judges the first request of each endpoint for real and then
answers every later request on that endpoint with the same outcome, its uid replaced by
the request's. What meshgate costs beyond this server is the judging (decision, gate and
patch); what this server costs beyond the floor is everything else meshgate does per
request (request handling, the response with its patch, the log line, the metrics).

Only meaningful when each endpoint is sent one kind of body, as the benchmark does.

    python -m bench.edge serve --dev --namespaces-file FILE --cert-dir DIR --port PORT
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from webhook import cli, fastpath
from webhook.admission import Context, Outcome

Admit = Callable[[Mapping[str, Any], str, Context], Outcome]


def judged_once(admit: Admit) -> Admit:
    """`admit`, run once per endpoint; later calls repeat that outcome with their uid."""
    first: dict[str, Outcome] = {}

    def repeat(request: Mapping[str, Any], endpoint: str, context: Context) -> Outcome:
        outcome = first.get(endpoint)
        if outcome is None:
            outcome = first[endpoint] = admit(request, endpoint, context)
        review = outcome.review
        response = {**review["response"], "uid": request["uid"]}
        # A shallow copy with the new review, made without dataclasses.replace: that one
        # costs several microseconds a call, which this server would wrongly count as the
        # edge's (the real path builds its Outcome once, directly).
        repeated = object.__new__(Outcome)
        repeated.__dict__.update(outcome.__dict__, review={**review, "response": response})
        return repeated

    return repeat


def main(argv: Sequence[str] | None = None) -> int:
    fastpath.admit = judged_once(fastpath.admit)  # type: ignore[assignment]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
