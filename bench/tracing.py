"""Tracing cost: the mixed load of `load.py` on `gateway serve --workers 2`, traced and not.

Traced: every request sampled (`OTEL_TRACES_SAMPLER=always_on`) and exported over OTLP/HTTP to a
receiver on loopback that decodes every batch (`tests.servers.OtlpReceiver`, as a collector
would). Untraced: no OpenTelemetry variable at all (the default). The baseline is the untraced
gateway in the same run, same client, same data; the two alternate (off, on, off, on) so a
machine that speeds up or slows down during the run does not favour either. Three rounds each:
the median of two is their mean, and one round in a slow spell of this shared machine (364
against 636 req/s) took a fifth off it. Reports the median
throughput of each and the ratio, and how many spans the receiver got.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from load import run_load, served, start_gateway, warm_up

from gateway.observability import configure_logging
from tests.servers import OtlpReceiver

OTEL = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME")


def measure(root: Path, *, clients: int, seconds: float, warmup: float) -> float:
    """Requests per second of one gateway started with the current environment."""
    server, url, _ = start_gateway(root)
    try:
        etags = warm_up(url, clients=clients, seconds=warmup)
        counts, _errors, elapsed = asyncio.run(
            run_load(url, clients=clients, seconds=seconds, etags=etags)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return served(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_logging(log_format="json", level="error")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    with OtlpReceiver() as receiver:
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                for name in OTEL:
                    os.environ.pop(name, None)
                if mode == "on":
                    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
                    os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
                    os.environ["OTEL_SERVICE_NAME"] = "gateway-bench"
                root = Path(tempfile.mkdtemp(prefix=f"bench-tracing-{mode}-{round_}-"))
                rate = measure(root, clients=args.clients, seconds=args.seconds, warmup=args.warmup)
                rates[mode].append(rate)
                print(f"  round {round_ + 1}, tracing {mode}: {rate:,.1f} req/s")
        spans = len(receiver.spans)
    for name in OTEL:
        os.environ.pop(name, None)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"{'figure':<44} {'gateway':>12} {'baseline':>12} {'ratio':>7}")
    print(
        f"{'mixed throughput, tracing on (req/s)':<44} {on:>12,.1f} {off:>12,.1f} {on / off:>6.2f}x"
    )
    print(f"(baseline: the same gateway with tracing off; {spans:,} spans received over OTLP)")


if __name__ == "__main__":
    main()
