"""The machine's own cost of waking a process on another core: a one-byte ping-pong over two
pipes between a process pinned to core A and one pinned to core B, with a pause between round
trips (so the other core goes idle, as the activator's does between requests), and the round
trips' percentiles. Run it with A == B for the same-core baseline.

    python3 bench/crosscore.py 0 1 20000 0.0002   # cores 0 and 1, 20,000 round trips, 0.2 ms apart
    python3 bench/crosscore.py 0 0 20000 0.0002   # both on core 0

Used in bench/RESULTS-autoscale.md to tell the activator's added tail latency from the VM's.
"""

import os
import sys
import time


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    a_cpu, b_cpu, n, gap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if n < 100 or gap < 0:
        sys.exit("at least 100 round trips, and a gap of 0 or more seconds")
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {b_cpu})
        while True:
            d = os.read(ping_r, 1)
            if not d or d == b"q":
                os._exit(0)
            os.write(pong_w, d)
    os.sched_setaffinity(0, {a_cpu})
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        os.write(ping_w, b"x")
        os.read(pong_r, 1)
        lat.append(time.perf_counter() - t)
        if gap:
            # Spin, not sleep: this core stays awake, only the other one idles.
            end = time.perf_counter() + gap
            while time.perf_counter() < end:
                pass
    os.write(ping_w, b"q")
    os.wait()
    lat.sort()

    def q(p: float) -> float:
        return lat[int(p * (len(lat) - 1))] * 1e3

    print(
        f"cores {a_cpu}->{b_cpu}, gap {gap * 1e3:.2f} ms, {n} round trips: p50 {q(.5):.3f} "
        f"p90 {q(.9):.3f} p99 {q(.99):.3f} p99.9 {q(.999):.3f} max {lat[-1] * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
