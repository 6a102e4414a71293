"""Robust anomaly detection on a metric sampled at a fixed interval: EWMA with MAD bands.

Each series (a signal of one deployment, route or tenant) keeps an exponentially weighted
mean of its recent values and the median absolute deviation (MAD) of its last residuals.
A sample is *high* when it exceeds ``mean + k · 1.4826 · MAD`` (1.4826 makes the MAD a
standard deviation for normal data) and also the series' ``min_delta`` (a change too small
to matter is not an incident, however steady the baseline was: an error rate going from
0 to 0.1 % is noise). Why these: a plain standard deviation is inflated by the very
spikes it should detect, the MAD is not; and samples judged anomalous are clipped to the
band before they update the baseline, so an incident does not teach the detector that
the incident is normal. For a rate measured on few events, the band is also at least
three binomial standard errors wide: 2 failures in 20 requests is not news.

A detector fires after ``confirm`` high samples in a row and clears after ``clear``
normal ones (hysteresis: one noisy sample neither raises nor resolves an alert); it stays
silent while it learns (``warmup`` samples). Seasonal baselines (hour-of-week) are not
kept: the gateway's traffic is sampled every few seconds and alerts are about minutes;
a daily pattern only moves the EWMA slowly, which it follows.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down"]
MAD_TO_SIGMA = 1.4826


@dataclass(slots=True)
class DetectorSettings:
    k: float = 4.0
    """Band width in robust standard deviations."""
    min_delta: float = 0.0
    """A breach must also differ from the baseline by this much (absolute)."""
    alpha: float = 0.1
    """EWMA weight of a new sample (0.1: about the last 10-20 samples)."""
    window: int = 60
    """Residuals kept for the MAD."""
    warmup: int = 12
    confirm: int = 2
    clear: int = 3
    floor: float = 0.0
    """The least scale assumed (a perfectly steady series still has some noise)."""
    direction: Direction = "up"


@dataclass(slots=True)
class Verdict:
    firing: bool
    changed: bool
    """Fired or cleared on this sample."""
    value: float
    baseline: float
    upper: float
    """The band's edge in the bad direction (a lower edge for ``down`` series)."""


@dataclass(slots=True)
class Detector:
    settings: DetectorSettings
    mean: float | None = None
    samples: int = 0
    residuals: deque[float] = field(default_factory=deque)
    high_run: int = 0
    normal_run: int = 0
    firing: bool = False

    def scale(self) -> float:
        if len(self.residuals) < 3:
            return self.settings.floor
        mad = statistics.median(abs(r) for r in self.residuals)
        return max(MAD_TO_SIGMA * mad, self.settings.floor)

    def edge(self, noise: float = 0.0) -> float:
        s = self.settings
        mean = self.mean or 0.0
        width = max(s.k * self.scale(), s.min_delta, 3 * noise)
        return mean + width if s.direction == "up" else mean - width

    def update(self, value: float, count: int | None = None) -> Verdict:
        """One sample; ``count``: how many events a rate was measured on (its binomial
        noise, ``sqrt(p(1-p)/n)`` at the baseline rate, widens the band for small samples)."""
        s = self.settings
        if self.mean is None:
            self.mean = value
            self.samples = 1
            return Verdict(False, False, value, value, value)
        noise = 0.0
        if count:
            p = min(max(self.mean, 0.02), 0.98)
            noise = math.sqrt(p * (1 - p) / count)
        edge = self.edge(noise)
        baseline = self.mean
        high = self.samples >= s.warmup and (value > edge if s.direction == "up" else value < edge)
        # learn, with anomalous samples clipped to the band
        learned = edge if high else value
        residual = learned - self.mean
        self.residuals.append(residual)
        if len(self.residuals) > s.window:
            self.residuals.popleft()
        self.mean += s.alpha * residual
        self.samples += 1
        changed = False
        if high:
            self.high_run += 1
            self.normal_run = 0
            if not self.firing and self.high_run >= s.confirm:
                self.firing = changed = True
        else:
            self.normal_run += 1
            self.high_run = 0
            if self.firing and self.normal_run >= s.clear:
                self.firing = False
                changed = True
        return Verdict(self.firing, changed, value, baseline, edge)
