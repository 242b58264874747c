"""NF liveness: the stall rule and its bookkeeping per NF (pure: readings and ``now`` in).

One rule serves native NFs (counters in the chain buffer header) and third-party
NFs (their bridge's counters, :class:`worker.thirdparty_spec.Health`):

    An NF has *stalled* once, for ``bound_s`` seconds, its own counter has not
    moved while it had work: packets went into it (its input counter moved
    since the last time its own moved), or packets were waiting for it at every
    reading (its input ring was not empty).

An idle NF (nothing in, nothing waiting) is never stalled, however long its
counter stands still.  :class:`Stall` is the rule for one NF;
:class:`ChainLiveness` applies it to every native NF of every attached chain
instance from :meth:`worker.chain.ChainInstance.progress` readings.

The readings of one NF position (a dict):

``own``
    the NF's own progress counter (packets it took: ``qs_nfctl.pkts``);
``input``
    a counter of what was offered to it, or None if nothing counts that (NF 0:
    the kernel's RX counter of its VF netdev; NF i > 0: None);
``queued``
    packets waiting for it now (NF i > 0: its input ring; NF 0: the ring the
    last NF returns slots on, which NF 0 must transmit), or None;
``running``
    False while the NF is not expected to run (parked, draining, starting):
    the rule starts over;
``alive``
    False once the NF's process is gone (or a zombie): failed at once,
    whatever its counters say.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Mark:
    t: float
    input: int | None
    own: int


class Stall:
    """The stall rule for one NF.  :meth:`update` returns the seconds it has been
    stalled once that reaches ``bound_s``, else None."""

    def __init__(self, bound_s: float):
        if not bound_s > 0:
            raise ValueError(f"bound_s: {bound_s!r} is not a positive number of seconds")
        self.bound_s = bound_s
        self._mark: _Mark | None = None  # since when nothing moved: now, input, own
        self.waiting = 0  # input that went in since the mark (for the reason)
        self.queued = 0  # what waited at the last reading

    def reset(self) -> None:
        self._mark = None

    def update(self, own: int, input: int | None, queued: int | None, now: float) -> float | None:
        m = self._mark
        if m is None or own != m.own:
            self._mark = _Mark(now, input, own)  # it made progress: all is well
            return None
        went_in = input is not None and m.input is not None and input != m.input
        self.queued = queued or 0
        if not went_in and not queued:
            self._mark = _Mark(now, input, own)  # nothing for it to do: nothing to wait for
            return None
        self.waiting = input - m.input if went_in else 0
        stalled = now - m.t
        return stalled if stalled >= self.bound_s else None


class ChainLiveness:
    """The stall rule over the native NFs of the instances a worker runs.

    :meth:`update` takes one instance's readings (one dict per NF position, see
    the module docstring; ``skip`` marks positions judged elsewhere, such as
    third-party NFs) and returns ``[(nf index, reason)]`` for the NFs found
    stalled now.  An instance it is not told about any more is forgotten by
    :meth:`forget_others`.
    """

    def __init__(self, bound_s: float):
        if not bound_s > 0:
            raise ValueError(f"stall bound: {bound_s!r} is not a positive number of seconds")
        self.bound_s = bound_s
        self.tracks: dict[int, list[Stall]] = {}

    def update(self, iid: int, readings: list[dict], now: float) -> list[tuple[int, str]]:
        track = self.tracks.get(iid)
        if track is None or len(track) != len(readings):
            track = self.tracks[iid] = [Stall(self.bound_s) for _ in readings]
        out = []
        for i, (r, st) in enumerate(zip(readings, track, strict=True)):
            if r.get("alive") is False and not r.get("skip"):
                out.append((i, f"NF {i} exited (its process is gone)"))
                continue
            if r.get("skip") or not r.get("running", True):
                st.reset()
                continue
            stalled = st.update(int(r["own"]), r.get("input"), r.get("queued"), now)
            if stalled is None:
                continue
            what = []
            if st.waiting:
                what.append(f"{st.waiting} packets offered")
            if st.queued:
                what.append(f"{st.queued} waiting")
            out.append((i, f"NF {i} stalled: {', '.join(what) or 'packets waiting'}, none "
                           f"taken for {stalled * 1000:.0f} ms"))  # fmt: skip
        return out

    def forget_others(self, iids) -> None:
        for gone in set(self.tracks) - set(iids):
            del self.tracks[gone]
