"""Audio-video synchronisation metrics that need no ground truth: events seen vs events heard.

For sounding-shapes clips (generated or real), bounces are read from the frames (velocity reversals
of each palette colour's centroid) and onsets from the waveform (energy rises); matching them gives
an event F1 and a mean absolute offset. `av_offset` is the generic estimate for any clip: the lag
that best aligns the video's motion-change envelope with the audio's onset-strength envelope.

Default tolerance: half a video frame period (62.5 ms at 8 fps). An event placed at the nearest
frame is at most half a frame off, while a whole-frame tolerance would let chance alignments of
unrelated events score well: chance F1 is about events x 2 x tolerance / duration, ~0.2 for
sounding-shapes clips (2-3 events in 2 s) at this default, against 1.0 for ground-truth clips.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage
import scipy.optimize
import scipy.signal

from harmony_jax.data.sounding_shapes import BACKGROUND, PALETTE, WORLD_COLORS

_ONSET_WINDOW = 0.016  # s, RMS window on either side of a candidate onset
_ONSET_HOP = 0.002  # s
_ENVELOPE_RATE = 100.0  # Hz, common rate of the video and audio envelopes in `av_offset`
_MOTION_FLOOR = 2e-3  # RMS second difference (pixel values in [0, 1]) a motion event reaches
_PEAK_HALF_WIDTH = 0.1  # s around the correlation's peak that is not sidelobe
_CHUNK = 64  # frames `motion_change` blurs at a time
_MIN_PSR = 2.0  # peak-to-sidelobe ratio below which the correlation has no peak


def _to_unit(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video, np.float64)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [F, H, W, 3] in [-1, 1], got shape {video.shape}")
    return (video + 1.0) / 2.0


def color_tracks(
    video: np.ndarray,
    min_mass: float = 5.0,
    min_cosine: float = 0.9,
    palette: Sequence[str] = WORLD_COLORS,
) -> dict[str, np.ndarray]:
    """Per colour of `palette` (the world's, `data.colors`: a colour the world never draws would
    claim the desaturated edges of compressed balls), the centroid track [F, 2] (x, y pixels;
    nan where the colour is absent).

    Each pixel's offset from the frame's background (per-channel median) is assigned to the palette
    colour it points to (cosine >= `min_cosine`) with a coverage weight in [0, 1]: the projection
    onto that colour. Blur only lowers the weights, so blurry generated balls keep their centroid;
    frames where a colour's total weight is under `min_mass` pixels count as absent.
    """
    frames = _to_unit(video)  # [F, H, W, 3]
    height, width = frames.shape[1:3]
    offset = frames - np.median(frames, axis=(1, 2), keepdims=True)  # [F, H, W, 3]
    directions = np.array([PALETTE[n][0] for n in palette]) - np.asarray(BACKGROUND)  # [K, 3]
    projection = np.einsum("fhwc,kc->fhwk", offset, directions)  # [F, H, W, K]
    coverage = projection / np.sum(directions**2, -1)
    cosine = projection / (
        np.linalg.norm(offset, axis=-1, keepdims=True) * np.linalg.norm(directions, axis=-1) + 1e-9
    )
    best = np.argmax(cosine, axis=-1)[..., None] == np.arange(len(palette))
    weight = np.where(best & (cosine >= min_cosine), np.clip(coverage, 0.0, 1.0), 0.0)  # [F,H,W,K]
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    mass = weight.sum(axis=(1, 2))  # [F, K]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.einsum("fhwk,hw->fk", weight, xs) / mass
        cy = np.einsum("fhwk,hw->fk", weight, ys) / mass
    tracks = np.stack([cx, cy], axis=-1)  # [F, K, 2]
    tracks[mass < min_mass] = np.nan
    return {name: tracks[:, k] for k, name in enumerate(palette)}


def _reversals(x: np.ndarray, min_excursion: float) -> list[float]:
    """Sub-frame times (in frames) of the turning points of a 1D track.

    A wall bounce folds constant-speed motion, so x is a triangle wave: around a turning point k
    one of the two adjacent steps is bounce-free and gives the speed v, and the peak lies at
    k + (x[k+1] - x[k-1]) / (2 v) (exact for noise-free frames). A turn counts only if the track
    moves at least `min_excursion` pixels away from it within two frames on each side.
    """
    times = []
    for k in range(1, len(x) - 1):
        for sign in (1.0, -1.0):
            s = sign * x  # look for maxima of s
            if np.isnan(s[k - 1 : k + 2]).any() or not (s[k] > s[k - 1] and s[k] >= s[k + 1]):
                continue
            left, right = s[max(k - 2, 0) : k], s[k + 1 : k + 3]
            if s[k] - np.nanmin(left) < min_excursion or s[k] - np.nanmin(right) < min_excursion:
                continue
            speed = max(s[k] - s[k - 1], s[k] - s[k + 1])
            times.append(k + (s[k + 1] - s[k - 1]) / (2 * speed))
    return times


def _merge(times: np.ndarray, min_gap: float) -> np.ndarray:
    """Sorted times with clusters closer than `min_gap` replaced by their mean (one event each)."""
    times = np.sort(times)
    if len(times) == 0:
        return times
    groups = np.split(times, np.nonzero(np.diff(times) >= min_gap)[0] + 1)
    return np.array([g.mean() for g in groups])


def detect_bounces(
    video: np.ndarray,
    fps: float,
    min_mass: float = 5.0,
    min_excursion: float = 0.5,
    palette: Sequence[str] = WORLD_COLORS,
) -> np.ndarray:
    """Bounce times (seconds, sorted) seen in the frames: velocity reversals, in x or y, of each
    palette colour's centroid. Reversals within one frame of each other (a corner, or two balls)
    are one event, as they sound as one onset."""
    events = []
    for track in color_tracks(video, min_mass, palette=palette).values():
        for axis in range(2):
            events += _reversals(track[:, axis], min_excursion)
    return _merge(np.asarray(events, np.float64) / fps, 1.0 / fps)


def _rms_around(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """RMS over the window just before and just after each hop time t_i = i * hop: ([T], [T])."""
    audio = np.asarray(audio, np.float64)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a mono waveform [S], got shape {audio.shape}")
    window = int(round(_ONSET_WINDOW * sample_rate))
    hop = int(round(_ONSET_HOP * sample_rate))
    energy = np.concatenate([[0.0], np.cumsum(audio**2)])  # energy[n] = sum of x[:n]**2
    at = np.arange(0, len(audio) + 1, hop)
    before = energy[at] - energy[np.maximum(at - window, 0)]
    after = energy[np.minimum(at + window, len(audio))] - energy[at]
    return np.sqrt(before / window), np.sqrt(after / window)


def onset_strength(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Rise of the RMS level across each hop time t_i = i * hop [T]: after minus before, >= 0.

    For a sharp onset this peaks exactly at the onset (a centred-window envelope's slope peaks
    half a window early).
    """
    before, after = _rms_around(audio, sample_rate)
    return np.maximum(after - before, 0.0)


def detect_onsets(
    audio: np.ndarray,
    sample_rate: int,
    threshold: float = 0.2,
    min_gap: float = 0.1,
    floor: float = 1e-3,
) -> np.ndarray:
    """Onset times (seconds, sorted): peaks of the RMS rise.

    Thresholds are relative to the clip's largest rise (`threshold`) and to its median level (the
    level after an onset must reach 4x the median RMS), so the noise floor and smeared phases of
    Griffin-Lim audio do not make onsets; a clip whose RMS never reaches `floor` has none.
    """
    before, after = _rms_around(audio, sample_rate)
    strength = np.maximum(after - before, 0.0)
    if after.max() < floor:
        return np.zeros(0)
    peaks, _ = scipy.signal.find_peaks(
        strength,
        height=threshold * strength.max(),
        distance=max(1, int(round(min_gap / _ONSET_HOP))),
    )
    peaks = peaks[after[peaks] >= 4.0 * np.median(after)]
    return peaks * _ONSET_HOP


def event_f1(
    reference: np.ndarray, estimate: np.ndarray, tolerance: float
) -> tuple[float, float, float]:
    """(F1, precision, recall) of a one-to-one matching within `tolerance` seconds.

    Empty reference or estimate scores 0 (as mir_eval's onset F-measure does).
    """
    matches = _match(reference, estimate, tolerance)
    if len(reference) == 0 or len(estimate) == 0 or not matches:
        return 0.0, 0.0, 0.0
    precision = len(matches) / len(estimate)
    recall = len(matches) / len(reference)
    return 2 * precision * recall / (precision + recall), precision, recall


def mean_abs_offset_ms(reference: np.ndarray, estimate: np.ndarray, tolerance: float) -> float:
    """Mean |estimate - reference| (ms) over the matched pairs; nan when nothing matches."""
    matches = _match(reference, estimate, tolerance)
    if not matches:
        return float("nan")
    return 1000.0 * float(np.mean([abs(estimate[j] - reference[i]) for i, j in matches]))


def _match(reference: np.ndarray, estimate: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """Maximum one-to-one matching within tolerance, of least total offset (Hungarian)."""
    reference = np.asarray(reference, np.float64)
    estimate = np.asarray(estimate, np.float64)
    if len(reference) == 0 or len(estimate) == 0:
        return []
    distance = np.abs(reference[:, None] - estimate[None, :])
    allowed = distance <= tolerance
    # Forbidden pairs cost more than any set of allowed ones: the match count is maximised first.
    cost = np.where(allowed, distance, tolerance * (len(reference) + len(estimate)) + 1.0)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return [(i, j) for i, j in zip(rows, cols) if allowed[i, j]]


def motion_change(video: np.ndarray, max_side: int = 64) -> np.ndarray:
    """Per frame k = 1..F-2, RMS second temporal difference of blurred frames [F - 2].

    Plain motion energy (mean |frame difference|) is flat for steady motion and even dips at a
    bounce, so it cannot time a sound. Blurred on the scale of an object (sigma = 1/6 of the
    short side), steady motion becomes nearly linear in time and its second difference small,
    while a change of motion (impact, bounce, start) leaves a peak. Frames are first block-averaged
    to at most `max_side` pixels on the short side, which keeps large videos cheap. RMS rather
    than mean |.| favours a localised change over diffuse noise of generated frames.
    """
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [F, H, W, 3] in [-1, 1], got shape {video.shape}")
    if len(video) < 3:
        raise ValueError(f"motion change needs at least 3 frames, got video shape {video.shape}")
    factor = max(1, min(video.shape[1:3]) // max_side)
    h, w = video.shape[1] - video.shape[1] % factor, video.shape[2] - video.shape[2] % factor
    sigma = min(h, w) // factor / 6.0

    def blurred(frames: np.ndarray) -> np.ndarray:  # [f, H, W, 3] -> [f, h, w, 3] float64
        frames = _to_unit(frames[:, :h, :w])
        if factor > 1:
            frames = frames.reshape(len(frames), h // factor, factor, w // factor, factor, 3).mean(
                axis=(2, 4)
            )
        return scipy.ndimage.gaussian_filter(frames, (0, sigma, sigma, 0))

    # the blur is per frame: blurring _CHUNK frames (+ 2 shared) at a time is exact, and holds
    # only those in float64 however long the clip
    out = []
    for start in range(0, len(video) - 2, _CHUNK):
        frames = blurred(video[start : start + _CHUNK + 2])
        out.append(
            np.sqrt(np.mean((frames[2:] - 2 * frames[1:-1] + frames[:-2]) ** 2, axis=(1, 2, 3)))
        )
    return np.concatenate(out)


def _correlation(
    video: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int, max_lag: float
) -> tuple[np.ndarray, np.ndarray]:
    """(lags in grid steps [L], scores [L]): the cross-correlation `av_offset` maximises."""
    rate = _ENVELOPE_RATE
    duration = len(audio) / sample_rate
    grid = np.arange(int(np.ceil(duration * rate))) / rate
    motion = motion_change(video)
    frame_times = np.arange(1, len(motion) + 1) / fps
    v = np.interp(grid, frame_times, motion, left=np.nan, right=np.nan)
    strength = onset_strength(audio, sample_rate)
    a = np.interp(grid, np.arange(len(strength)) * _ONSET_HOP, strength)
    a = scipy.ndimage.gaussian_filter1d(a, sigma=0.5 * rate / fps)
    v = np.where(np.isnan(v), 0.0, v - np.nanmean(v))
    a = a - a.mean()
    lags = np.arange(-int(max_lag * rate), int(max_lag * rate) + 1)
    scores = [
        np.dot(v[max(0, -lag) : len(v) - max(0, lag)], a[max(0, lag) : len(a) - max(0, -lag)])
        for lag in lags
    ]
    return lags, np.asarray(scores, np.float64)


def av_offset(
    video: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int, max_lag: float = 1.0
) -> float:
    """Audio-video offset (seconds) of any clip; positive = audio late (sounds after the motion).

    The video motion-change envelope and the audio onset-strength envelope, both on a 100 Hz grid
    and smoothed to video-frame resolution, are cross-correlated (zero outside each envelope, so
    short overlaps at large lags are not favoured); the best lag within +/- `max_lag` wins.
    """
    lags, scores = _correlation(video, fps, audio, sample_rate, max_lag)
    return float(lags[int(np.argmax(scores))] / _ENVELOPE_RATE)


def motion_events(
    video: np.ndarray,
    fps: float,
    threshold: float = 0.2,
    min_gap: float = 0.1,
    floor: float = _MOTION_FLOOR,
) -> np.ndarray:
    """Times (s, at frame k / fps) of changes of motion: peaks of `motion_change` that reach
    `floor` (a static clip's coding noise stays far below it) and stand out from their
    surroundings by `threshold` x the largest (steady motion's ripple does not)."""
    motion = motion_change(video)  # [F - 2], frames 1 .. F - 2
    if motion.max() < floor:
        return np.zeros(0)
    # zero-padded, so a change at the first or last analysed frame counts as a peak
    peaks, _ = scipy.signal.find_peaks(
        np.pad(motion, 1),
        height=floor,
        prominence=threshold * motion.max(),
        distance=max(1, int(round(min_gap * fps))),
    )
    return peaks / fps  # padded index k = frame k


def offset_evidence(
    video: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int, max_lag: float = 1.0
) -> dict[str, float]:
    """`av_offset` with the evidence behind it: av_offset_ms (nan when there is no evidence),
    peak_to_sidelobe (the correlation's peak over the rest, (peak - mean) / std of the lags more
    than `_PEAK_HALF_WIDTH` from it), motion_events and onset_events (counts).

    A clip without a change of motion (static video) or without an onset (silence, a steady
    tone), or whose correlation has no peak standing `_MIN_PSR` above its sidelobes, has no sync
    evidence: the best lag of a flat correlation is an edge of the search range, not a
    measurement."""
    moves = motion_events(video, fps)
    onsets = detect_onsets(audio, sample_rate)
    lags, scores = _correlation(video, fps, audio, sample_rate, max_lag)
    best = int(np.argmax(scores))
    sidelobes = scores[np.abs(lags - lags[best]) > _PEAK_HALF_WIDTH * _ENVELOPE_RATE]
    spread = sidelobes.std() if len(sidelobes) > 1 else 0.0
    psr = float((scores[best] - sidelobes.mean()) / spread) if spread > 0 else 0.0
    found = len(moves) > 0 and len(onsets) > 0 and psr >= _MIN_PSR
    return {
        "av_offset_ms": 1000.0 * float(lags[best] / _ENVELOPE_RATE) if found else float("nan"),
        "peak_to_sidelobe": psr,
        "motion_events": float(len(moves)),
        "onset_events": float(len(onsets)),
    }


def clip_sync_metrics(
    video: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    tolerance: float | None = None,
    palette: Sequence[str] = WORLD_COLORS,
) -> dict[str, float]:
    """Sync of one clip, no ground truth needed: bounces seen in the frames (reference) vs onsets
    heard in the audio (estimate). `tolerance` seconds; None = half a frame period; `palette`:
    the world's colours.

    Returns event_f1, precision, recall, mean_abs_offset_ms (nan if nothing matched),
    av_offset_ms (positive = audio late), num_bounces, num_onsets.
    """
    tolerance = 0.5 / fps if tolerance is None else tolerance
    bounces = detect_bounces(video, fps, palette=palette)
    onsets = detect_onsets(audio, sample_rate)
    f1, precision, recall = event_f1(bounces, onsets, tolerance)
    return {
        "event_f1": f1,
        "precision": precision,
        "recall": recall,
        "mean_abs_offset_ms": mean_abs_offset_ms(bounces, onsets, tolerance),
        "av_offset_ms": 1000.0 * av_offset(video, fps, audio, sample_rate),
        "num_bounces": float(len(bounces)),
        "num_onsets": float(len(onsets)),
    }


def sync_table(rows: dict[str, list[dict[str, float]]]) -> str:
    """Plain-text table of per-clip metrics averaged per row name (nan-aware); the ball columns
    (eval/shapes.py) where the rows have them."""
    header = f"{'name':<24} {'event F1':>9} {'|offset| ms':>12} {'AV offset ms':>13}"
    shapes = any("balls_right" in c for clips in rows.values() for c in clips)
    header += f" {'balls right':>11} {'smooth':>7} {'clips':>6}" if shapes else f" {'clips':>6}"
    lines = [header, "-" * len(header)]
    for name, clips in rows.items():
        keys = ("event_f1", "mean_abs_offset_ms", "av_offset_ms", "balls_right", "smooth")
        f1, offset, av, balls, smooth = (nan_mean([c.get(k, np.nan) for c in clips]) for k in keys)
        line = f"{name:<24} {f1:>9.3f} {offset:>12.1f} {av:>13.1f}"
        line += f" {balls:>11.2f} {smooth:>7.2f}" if shapes else ""
        lines.append(f"{line} {len(clips):>6d}")
    return "\n".join(lines)


def paired_bootstrap_ci(
    values: Sequence[float], baseline: Sequence[float], draws: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of mean(values - baseline) over clips resampled with replacement (pairs
    kept together: a clip's generated and shuffled scores share its prompt)."""
    diff = np.asarray(values, np.float64) - np.asarray(baseline, np.float64)
    picks = np.random.default_rng(seed).integers(0, len(diff), (draws, len(diff)))
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def versus_shuffled(rows: dict[str, list[dict[str, float]]]) -> str:
    """Per mode: event F1 of the generated clips, of the same clips with the audio shuffled
    (chance), their ratio and the paired bootstrap 95% interval of the difference."""
    header = f"{'mode':<14} {'F1':>6} {'shuffled':>9} {'ratio':>6} {'95% CI of F1 - shuffled':>24}"
    lines = [header, "-" * len(header)]
    for name in rows:
        base = name.replace(" generated", " shuffled") if name.endswith(" generated") else None
        if name == "ground truth":
            base = "ground truth, shuffled"
        if base not in rows:
            continue
        f1 = [c["event_f1"] for c in rows[name]]
        chance = [c["event_f1"] for c in rows[base]]
        low, high = paired_bootstrap_ci(f1, chance)
        mean, mean_chance = float(np.mean(f1)), float(np.mean(chance))
        # no chance hits: any F1 is infinitely many times chance, none is no ratio at all
        ratio = mean / mean_chance if mean_chance > 0 else float("inf") if mean > 0 else np.nan
        lines.append(
            f"{name.removesuffix(' generated'):<14} {mean:>6.3f} {mean_chance:>9.3f} "
            f"{ratio:>6.1f} {f'[{low:+.3f}, {high:+.3f}]':>24}"
        )
    return "\n".join(lines)


def nan_mean(values: list[float]) -> float:
    """The mean of the finite values; nan when none is (no warning, unlike `np.nanmean`)."""
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
