"""An open-loop HTTP load generator (asyncio, standard library): requests
are sent on a fixed schedule whatever the server's speed, and latency is
measured from the scheduled send time, so a slow server cannot hide its
queueing (no coordinated omission)."""
import asyncio
import time


async def _one(pool, host, port, path, body, stats, scheduled):
    try:
        reader, writer = pool.pop() if pool else await asyncio.open_connection(host, port)
    except OSError:
        stats["errors"] += 1
        return
    try:
        writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % (path.encode(), len(body)) + body)
        status_line = await reader.readline()
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        await reader.readexactly(length)
        if b" 200 " in status_line:
            stats["lat"].append(time.monotonic() - scheduled)
        else:
            stats["errors"] += 1
        pool.append((reader, writer))
    except (OSError, asyncio.IncompleteReadError):
        stats["errors"] += 1
        writer.close()


async def _run(host, port, path, body, rate, seconds):
    stats = {"lat": [], "errors": 0}
    pool, tasks = [], []
    start = time.monotonic() + 0.05
    n = int(rate * seconds)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_one(pool, host, port, path, body, stats, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    for _, w in pool:
        w.close()
    return stats, elapsed


def run(host, port, path, body, rate, seconds):
    """Offers `rate` requests/s for `seconds`; returns (latencies, errors, elapsed)."""
    stats, elapsed = asyncio.run(_run(host, port, path, body, rate, seconds))
    return sorted(stats["lat"]), stats["errors"], elapsed
