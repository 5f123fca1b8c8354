"""The timeseries example's second stage: fills the minutes no sample fell
in.  Linear interpolation between the nearest known minutes, the nearest
known value at the edges; each window says how many minutes were made up.
Standard library only.  fill() is also what bench/timeseries calls."""


def fill_window(w):
    mins = w["minutes"]
    known = [i for i, v in enumerate(mins) if v is not None]
    if not known:
        raise ValueError("window %s has no sample" % w.get("window_id"))
    out = list(mins)
    for i in range(len(mins)):
        if out[i] is not None:
            continue
        # The known neighbours around i (known is sorted).
        left = max((k for k in known if k < i), default=None)
        right = min((k for k in known if k > i), default=None)
        if left is None:
            out[i] = mins[right]
        elif right is None:
            out[i] = mins[left]
        else:
            f = (i - left) / (right - left)
            out[i] = mins[left] + f * (mins[right] - mins[left])
    w = dict(w)
    w["minutes"] = out
    w["filled"] = len(mins) - len(known)
    return w


def fill(windows):
    return [fill_window(w) for w in windows]


if __name__ == "__main__":
    import json
    import baton_worker as bw

    def handle(payload, meta):
        try:
            return fill(json.loads(payload))
        except (ValueError, KeyError, TypeError) as e:
            raise bw.Reject(str(e))

    bw.run(handle)
