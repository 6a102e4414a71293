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
silent while it learns (``warmup`` samples).

**Seasonal baseline.** A smooth daily pattern only moves the EWMA slowly, which it
follows; a step in the pattern does not: a practice that opens at 8:00 sends ten times
the night's tokens within minutes, every weekday, and an EWMA alone calls that an
incident every morning. So each series also keeps an hour-of-week profile (168 slots,
UTC; each slot an EWMA of the samples seen in that hour, ``season_alpha`` per sample,
anomalous samples clipped as above). Once ``season_after_s`` of history exist (a week:
every slot seen once), the baseline is the slot's value plus an EWMA of the deviation
from the profile: the profile says what this hour usually looks like, the deviation's
EWMA follows this week's level (a practice that grew). Without timestamps (``at``) or
before a week, the plain EWMA. ``bench/anomaly_eval.py --seasonal`` measures the false
alerts it saves and the detection delay it keeps (``bench/results/anomaly-eval.md``).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down"]
MAD_TO_SIGMA = 1.4826
MEAN_ABS_TO_SIGMA = 1.2533
"""sqrt(pi / 2): a normal variable's standard deviation over its mean absolute deviation."""


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
    seasonal: bool = True
    """Use the hour-of-week profile once ``season_after_s`` of history exist."""
    season_after_s: float = 7 * 86400.0
    season_alpha: float = 0.05
    """EWMA weight of a sample in its hour-of-week slot."""


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
    first_at: float | None = None
    profile: dict[int, float] = field(default_factory=dict)
    """Hour-of-week slot -> the series' usual value in that hour."""
    deviation: float = 0.0
    """EWMA of (sample - its slot's profile value): this week's level against the usual."""
    spread: dict[int, float] = field(default_factory=dict)
    """Hour-of-week slot -> EWMA of the absolute residual in that hour: busy hours are
    noisier than quiet ones, and the band at 8:00 must not be the night's."""

    def expected(self, at: float | None) -> tuple[float, int | None, bool]:
        """The baseline for a sample at ``at``, its hour-of-week slot (None without
        timestamps) and whether the profile is in use (a week of history)."""
        mean = self.mean or 0.0
        s = self.settings
        if at is None or not s.seasonal or self.first_at is None:
            return mean, None, False
        slot = int(at // 3600) % 168
        usual = self.profile.get(slot)
        if usual is None or at - self.first_at < s.season_after_s:
            return mean, slot, False
        return usual + self.deviation, slot, True

    def scale(self, seasonal_slot: int | None = None) -> float:
        """The noise's robust standard deviation: the MAD of the recent residuals, and
        in seasonal mode at least this hour's usual spread (mean absolute residual)."""
        if len(self.residuals) < 3:
            return self.settings.floor
        mad = statistics.median(abs(r) for r in self.residuals)
        usual = self.spread.get(seasonal_slot, 0.0) if seasonal_slot is not None else 0.0
        return max(MAD_TO_SIGMA * mad, MEAN_ABS_TO_SIGMA * usual, self.settings.floor)

    def edge(
        self, noise: float = 0.0, baseline: float | None = None, slot: int | None = None
    ) -> float:
        s = self.settings
        mean = (self.mean or 0.0) if baseline is None else baseline
        width = max(s.k * self.scale(slot), s.min_delta, 3 * noise)
        return mean + width if s.direction == "up" else mean - width

    def update(self, value: float, count: int | None = None, at: float | None = None) -> Verdict:
        """One sample; ``count``: how many events a rate was measured on (its binomial
        noise, ``sqrt(p(1-p)/n)`` at the baseline rate, widens the band for small samples);
        ``at``: its time (epoch seconds), for the hour-of-week profile."""
        s = self.settings
        if self.mean is None:
            self.mean = value
            self.samples = 1
            self.first_at = at
            if at is not None and s.seasonal:
                self.profile[int(at // 3600) % 168] = value
            return Verdict(False, False, value, value, value)
        noise = 0.0
        if count:
            p = min(max(self.mean, 0.02), 0.98)
            noise = math.sqrt(p * (1 - p) / count)
        baseline, slot, seasonal = self.expected(at)
        edge = self.edge(noise, baseline, slot if seasonal else None)
        high = self.samples >= s.warmup and (value > edge if s.direction == "up" else value < edge)
        # learn, with anomalous samples clipped to the band
        learned = edge if high else value
        residual = learned - baseline
        self.residuals.append(residual)
        if len(self.residuals) > s.window:
            self.residuals.popleft()
        self.mean += s.alpha * (learned - self.mean)
        if slot is not None:
            usual = self.profile.get(slot)
            if usual is None:
                self.profile[slot] = learned
            else:
                self.deviation += s.alpha * (learned - usual - self.deviation)
                self.profile[slot] = usual + s.season_alpha * (learned - usual)
            spread = self.spread.get(slot, abs(residual))
            self.spread[slot] = spread + s.season_alpha * (abs(residual) - spread)
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
