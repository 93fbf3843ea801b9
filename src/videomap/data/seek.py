"""Seeking plan for :func:`videomap.data.decode.decode_frames` (DESIGN §5).

Frame ``i`` of a video is the ``i``-th frame the decoder returns when it reads the stream from the start.
A demux pass (no decoding) lists the stream's packets in decode order with their presentation timestamps
(pts) and key-frame flags: the :class:`PacketIndex`. When every packet carries its own pts and the decoder
returns one frame per packet in pts order, frame ``i`` is the packet with the ``i``-th smallest pts, and
it can be decoded starting from the last key frame before it instead of from the first frame.

This module holds the pure parts, so each rule can be tested without a video file:

* :func:`index_problem` — why an index cannot be trusted for seeking (then the full read is used);
* :func:`plan_runs` — which key frame each decode run starts from and which frames it must return;
* :class:`RunChecker` — watches a run (packets in, frames out) and raises :class:`SeekRejected` at the first
  thing the plan did not predict, so that the caller falls back to the full read.

``decode.py`` does the reading. :data:`stats` counts what both paths decoded.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

__all__ = [
    "PacketIndex",
    "Feed",
    "Run",
    "RunChecker",
    "SeekRejected",
    "DecodeStats",
    "SKIPPABLE_CODECS",
    "MERGE_GAP",
    "index_problem",
    "plan_runs",
    "stats",
]

# Decoders whose "skip non-reference frames" mode leaves every reference frame, and so every later
# frame, bit-identical: unreferenced frames only cost time. Other codecs decode every packet of a run.
SKIPPABLE_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg1video", "mpeg2video"})

# A wanted frame whose key frame lies at most this many packets past the current run's last wanted
# packet is reached by decoding on: a seek (demuxer seek + decoder reset) costs about that much.
MERGE_GAP = 8

# Packets a run may read past its last wanted packet while waiting for the decoder's reordering delay
# to release the wanted frames; more means the decoder is not behaving as the index predicts.
OUTPUT_SLACK = 64


class Feed(enum.Enum):
    """What to do with a demuxed packet during a run."""

    BEFORE_START = "before_start"    # not fed to the decoder: the run starts at a later key frame
    FULL = "full"                    # decoded, and its frame must come out
    IF_REFERENCED = "if_referenced"  # decoded only if later frames refer to it (skippable codecs)


class SeekRejected(Exception):
    """Seeking cannot be trusted for this file; the message says why (the caller reads sequentially)."""


@dataclass
class DecodeStats:
    """Process-wide counters of :func:`~videomap.data.decode.decode_frames` work (benchmarks, tests)."""

    seek_calls: int = 0        # calls answered by seeking
    sequential_calls: int = 0  # calls answered by the full read (including fallbacks)
    fallbacks: int = 0         # calls where seeking was rejected (untrusted index or a run went wrong)
    seeks: int = 0             # container seeks
    frames_decoded: int = 0    # frames the decoder returned, on either path

    def reset(self) -> None:
        self.seek_calls = self.sequential_calls = self.fallbacks = self.seeks = self.frames_decoded = 0


stats = DecodeStats()


@dataclass(frozen=True, eq=False)
class PacketIndex:
    """The video stream's non-empty packets in decode order, read without decoding.

    Attributes:
        pts: ``int64 (P,)`` presentation timestamps in stream time base (meaningless where ``problem`` says
            a timestamp is missing).
        key: ``bool (P,)`` key-frame flags.
        codec: decoder name, e.g. ``"h264"``.
        reorders: the decoder holds frames back to return them in presentation order (B-frames).
        problem: what the demux pass already found wrong for seeking (demux error, corrupt, discarded or
            empty packets, a missing timestamp), or ``None``.
    """

    pts: np.ndarray
    key: np.ndarray
    codec: str
    reorders: bool
    problem: str | None = None

    def __len__(self) -> int:
        return len(self.pts)

    @cached_property
    def frame_pts(self) -> np.ndarray:
        """``int64 (P,)``: the pts of frame ``i`` (the packets' timestamps in presentation order)."""
        return np.sort(self.pts)

    @cached_property
    def position(self) -> dict[int, int]:
        """pts → position of its packet in decode order."""
        return {int(t): i for i, t in enumerate(self.pts.tolist())}

    @cached_property
    def key_positions(self) -> np.ndarray:
        """``int64 (K,)`` decode-order positions of the key frames, ascending."""
        return np.flatnonzero(self.key)


def index_problem(index: PacketIndex) -> str | None:
    """Why ``index`` cannot map frame numbers to packets, or ``None`` when it can.

    Each rule guards the assumption "frame ``i`` = the packet with the ``i``-th smallest pts".
    """
    if index.problem:
        return index.problem
    pts, n = index.pts, len(index.pts)
    if n == 0:
        return "no video packets"
    if not index.key[0]:
        # A sequential read drops what precedes the first key frame: packets and frames would not match.
        return "the stream does not start with a key frame"
    if len(np.unique(pts)) != n:
        return "duplicate timestamps"
    if pts.min() < pts[0]:
        # Frames shown before the first key frame but decoded after it need references that do not
        # exist; decoders drop them, so the count of frames would not match the count of packets.
        return "frames before the first key frame in presentation order"
    in_decode_order = bool(np.all(np.diff(pts) > 0))
    if index.reorders and not in_decode_order:
        return None
    if not index.reorders and in_decode_order:
        return None
    if index.reorders:
        # B-frames but timestamps in decode order: the timestamps do not follow the pictures (typical of
        # containers that only store decode times), so sorting them does not give the decoder's order.
        return "timestamps in decode order although the stream has B-frames"
    return "timestamps out of decode order although the decoder does not reorder frames"


class Run(NamedTuple):
    """One decode run: seek to the key frame at ``start``, decode forward until every target is out.

    ``start``, ``stop`` and ``full_from`` are decode-order packet positions; ``targets`` are pts.
    """

    start: int                 # key frame the run starts from
    stop: int                  # last packet holding a target
    targets: tuple[int, ...]   # pts of the frames to keep, ascending
    to_end: bool = False       # read to the end and prove that every packet from full_from decodes
    full_from: int = -1        # packets from here on are decoded even if no later frame refers to them


def _start_key(index: PacketIndex, pos: int, pts: int) -> int:
    """Position of the last key frame decoded at or before ``pos`` and shown at or before ``pts``."""
    keys = index.key_positions
    j = int(np.searchsorted(keys, pos, side="right")) - 1
    # A key frame shown after the target (the target is one of its leading frames) cannot start the run;
    # the stream's first packet is a key frame with the smallest pts, so the loop ends.
    while index.pts[keys[j]] > pts:
        j -= 1
    return int(keys[j])


def plan_runs(index: PacketIndex, frames: np.ndarray, *, to_end: bool = False,
              merge_gap: int = MERGE_GAP) -> list[Run]:
    """Group wanted frames into decode runs.

    Args:
        index: a trusted index (:func:`index_problem` returned ``None``).
        frames: ``int64 (F,)`` distinct frame numbers in ``[0, len(index))``, ascending.
        to_end: the last run must also prove that the stream decodes to its last frame (needed to clamp
            indices past the end exactly as the full read does).
        merge_gap: see :data:`MERGE_GAP`.

    Returns:
        runs in stream order; every frame's target pts appears in exactly one run.
    """
    runs: list[Run] = []
    frame_pts = index.frame_pts
    for f in np.asarray(frames, dtype=np.int64).tolist():
        pts = int(frame_pts[f])
        pos = index.position[pts]
        key = _start_key(index, pos, pts)
        if runs and runs[-1].start <= key <= runs[-1].stop + merge_gap:
            # Decoding on from where the run already is costs less than seeking back to ``key``.
            last = runs[-1]
            runs[-1] = last._replace(stop=max(last.stop, pos), targets=last.targets + (pts,))
        else:
            runs.append(Run(key, pos, (pts,)))
    if to_end and runs:
        last_pts = int(frame_pts[-1])
        if runs[-1].targets[-1] != last_pts:
            raise ValueError("to_end needs the last frame among the wanted frames")
        key = _start_key(index, index.position[last_pts], last_pts)
        runs[-1] = runs[-1]._replace(stop=len(index) - 1, to_end=True, full_from=key)
    return runs


class RunChecker:
    """Follows one :class:`Run` and rejects anything a trusted index would not produce.

    The caller passes every packet it demuxes to :meth:`packet` (which returns the :class:`Feed`: not
    decoded, decoded in full, or decoded only if later frames refer to it), every frame the
    decoder returns to :meth:`frame` (which says whether to keep it), and :meth:`end` once the decoder
    is drained at the end of the stream. ``done`` turns true when the run has what it came for.

    Checks: packets arrive in the index's decode order from a point at or before ``run.start``;
    frames come out in strictly increasing pts order, each from a packet of this run; no frame of a
    packet decoded in full goes missing (except the leading frames of the key frame the run starts
    from, which reference frames before it and are legitimately dropped).
    """

    def __init__(self, index: PacketIndex, run: Run, *, skippable: bool):
        self.index, self.run, self.skippable = index, run, skippable
        self.targets = set(run.targets)
        self.remaining = len(self.targets)
        self.next_pos: int | None = None   # expected position of the next packet
        self.floor = int(index.pts[run.start])  # pts of the key frame decoding starts from
        self.last_out: int | None = None   # pts of the last frame returned
        self.pending: list[int] = []       # heap: pts fed in full and not returned yet
        self.fed: set[int] = set()
        self.at_end = False

    @property
    def done(self) -> bool:
        return self.remaining == 0 and (self.at_end or not self.run.to_end)

    @property
    def fed_last(self) -> bool:
        """The run's last wanted packet has been fed: draining the decoder now releases every target
        without decoding the packets after it (the next run seeks, which resets the decoder anyway)."""
        return not self.run.to_end and self.next_pos == self.run.stop + 1

    def drained(self) -> None:
        """The decoder was drained after the last wanted packet: everything fed in full is out."""
        self._settle(None)
        if self.remaining:
            raise SeekRejected(f"{self.remaining} wanted frame(s) never came out of the decoder")

    def packet(self, pts: int | None) -> Feed:
        """Register the next demuxed packet and say what to do with it."""
        index, run = self.index, self.run
        pos = None if pts is None else index.position.get(int(pts))
        if pos is None:
            raise SeekRejected(f"a packet with timestamp {pts} is not in the index")
        if self.next_pos is None:  # first packet after the seek
            if pos > run.start:
                raise SeekRejected(f"the seek landed on packet {pos}, after the key frame at {run.start}")
        elif pos != self.next_pos:
            raise SeekRejected(f"packet {pos} came where packet {self.next_pos} was expected")
        elif not run.to_end and pos > run.stop + OUTPUT_SLACK:
            raise SeekRejected(f"the wanted frames did not come out within {OUTPUT_SLACK} packets")
        self.next_pos = pos + 1
        if pos < run.start:
            # The demuxer seeks to some point before the key frame (MPEG-TS, coarse indexes): reading on
            # without decoding costs little, and decoding then starts at the planned key frame.
            return Feed.BEFORE_START
        pts = int(pts)
        self.fed.add(pts)
        full = (not self.skippable or bool(index.key[pos]) or pts in self.targets
                or (run.to_end and pos >= run.full_from))
        if full:
            heapq.heappush(self.pending, pts)
            return Feed.FULL
        return Feed.IF_REFERENCED

    def frame(self, pts: int | None) -> bool:
        """Register a decoded frame; returns ``True`` when it is one of the run's targets."""
        if pts is None:
            raise SeekRejected("a decoded frame has no timestamp")
        pts = int(pts)
        if pts not in self.fed:
            raise SeekRejected(f"a frame with timestamp {pts} came from no packet of the run")
        if self.last_out is not None and pts <= self.last_out:
            raise SeekRejected(f"frames out of timestamp order ({self.last_out} then {pts})")
        self.last_out = pts
        self._settle(pts)
        if self.pending and self.pending[0] == pts:
            heapq.heappop(self.pending)
        if pts in self.targets:
            self.targets.discard(pts)
            self.remaining -= 1
            return True
        return False

    def end(self) -> None:
        """The stream ended and the decoder is drained: every target and every full packet is out."""
        self.at_end = True
        if self.next_pos != len(self.index):
            raise SeekRejected(f"the stream ended after packet {self.next_pos} of {len(self.index)}")
        self._settle(None)
        if self.remaining:
            raise SeekRejected(f"{self.remaining} wanted frame(s) never came out of the decoder")

    def _settle(self, upto: int | None) -> None:
        """Pop the pending packets shown before ``upto`` (all of them when ``None``): they were dropped."""
        while self.pending and (upto is None or self.pending[0] < upto):
            dropped = heapq.heappop(self.pending)
            if dropped >= self.floor:
                raise SeekRejected(f"the decoder dropped the frame with timestamp {dropped}")
