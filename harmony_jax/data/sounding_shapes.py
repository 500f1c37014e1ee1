"""The sounding-shapes world: coloured balls bounce off the walls and every bounce sounds a tone.

A deterministic generator, index -> clip, usable as a grain random-access source. The motion is
solved in continuous time, so the ground-truth bounce times are exact rather than frame-quantised,
and each bounce starts a short decaying tone whose pitch names the ball's colour. Clips are drawn
(by rejection, from a per-index random stream) so that every event can be recovered from both
modalities: each ball bounces at least once, every bounce has a clean video frame on either side,
events are at least two frames apart and the balls never overlap in a frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_EVENTS = 32  # length of the padded `bounce_times` array

# name -> (RGB in [0, 1], tone pitch in Hz). Hues far apart so blurry frames still separate them;
# pitches a fifth apart, well separated on the mel scale, so pitch alone names the colour.
PALETTE: dict[str, tuple[tuple[float, float, float], float]] = {
    "red": ((1.0, 0.15, 0.1), 330.0),
    "green": ((0.15, 0.95, 0.15), 495.0),
    "blue": ((0.2, 0.35, 1.0), 742.5),
    "yellow": ((1.0, 0.95, 0.1), 1113.75),
    "magenta": ((1.0, 0.15, 1.0), 1670.6),
    "cyan": ((0.1, 0.95, 1.0), 2505.9),
    # Outside the default world: the colour a fine-tune teaches (`data.colors`, bench/demo_lora),
    # a fifth above cyan (below red, a 32-band mel would put it within a band of red's).
    "white": ((0.95, 0.95, 0.95), 3758.85),
}
COLOR_NAMES = tuple(PALETTE)  # every colour the detectors name
WORLD_COLORS = COLOR_NAMES[:6]  # the colours a world draws from unless `data.colors` says
BACKGROUND = (0.05, 0.05, 0.08)  # RGB in [0, 1]


def is_palette(colors: Any) -> bool:
    """Whether `colors` can be a world's palette (`data.colors`): distinct names of PALETTE."""
    return (
        not isinstance(colors, str)
        and len(colors) > 0
        and all(c in PALETTE for c in colors)
        and len(set(colors)) == len(colors)
    )


RADIUS_FRACTION = 0.1  # default ball radius / min(height, width) (`data.ball_radius`)
SPEEDS = {"slowly": (0.3, 0.4), "fast": (0.6, 0.75)}  # frame widths per second
MIN_AXIS_FRACTION = 0.5  # each velocity component >= this fraction of the speed
TONE_AMPLITUDE = 0.5
TONE_ATTACK = 0.002  # s; a near-instant attack makes a sharp onset
TONE_DECAY = 0.04  # s; exponential time constant
TONE_LENGTH = 0.3  # s; the tone is cut here (exp(-7.5) of its peak)
MAX_TRIES = 1000  # draws; a ball is accepted about every other draw, a scene every ~10


@dataclasses.dataclass(frozen=True)
class Scene:
    """One clip's balls, in pixels and seconds: centres at time 0, velocities, and bounces."""

    colors: tuple[str, ...]
    speed: str  # a key of SPEEDS
    radius: float
    start: np.ndarray  # [N, 2] (x, y) pixel centres at t = 0, pixel (i, j) has centre (j+.5, i+.5)
    velocity: np.ndarray  # [N, 2] pixels per second
    bounce_times: np.ndarray  # [E] seconds, sorted
    bounce_balls: np.ndarray  # [E] index of the ball that bounces


def ball_centres(scene: Scene, times: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centres [T, N, 2] at `times` (seconds), exact at any time, not only at frame instants."""
    return _fold(scene.start, scene.velocity, scene.radius, times, width, height)


def _fold(
    start: np.ndarray,
    velocity: np.ndarray,
    radius: float,
    times: np.ndarray,
    width: int,
    height: int,
) -> np.ndarray:
    """Free straight-line motion folded into the box: elastic reflection off the walls."""
    span = np.array([width, height], np.float64) - 2 * radius  # [2]
    free = start[None] + velocity[None] * np.asarray(times, np.float64)[:, None, None]  # [T, N, 2]
    phase = np.mod(free - radius, 2 * span)
    return radius + np.where(phase <= span, phase, 2 * span - phase)


def _wall_hits(
    start: np.ndarray, velocity: np.ndarray, radius: float, span: np.ndarray, duration: float
) -> np.ndarray:
    """Sorted exact times in (0, duration) at which one ball's centre reaches a wall position."""
    times = []
    for axis in range(2):
        # Unfold the reflections: the wall positions are radius + k * span for every integer k.
        u0 = start[axis] - radius
        u1 = u0 + velocity[axis] * duration
        ks = np.arange(np.floor(min(u0, u1) / span[axis]), np.ceil(max(u0, u1) / span[axis]) + 1)
        t = (ks * span[axis] - u0) / velocity[axis]
        times.append(t[(t > 0) & (t < duration)])
    return np.sort(np.concatenate(times))


def _separated(times: np.ndarray, first: float, last: float, min_gap: float) -> bool:
    return (
        len(times) > 0
        and times[0] >= first
        and times[-1] <= last
        and bool(np.all(np.diff(times) >= min_gap))
    )


def _draw_ball(
    rng: np.random.Generator,
    speed: str,
    radius: float,
    size: np.ndarray,
    duration: float,
    first: float,
    last: float,
    min_gap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One ball's (start [2], velocity [2], bounce times), its own bounces separable; or None."""
    span = size - 2 * radius
    axis_min = np.arcsin(MIN_AXIS_FRACTION)
    for _ in range(MAX_TRIES):
        start = radius + rng.uniform(size=2) * span
        angle = rng.uniform(axis_min, np.pi / 2 - axis_min) + (np.pi / 2) * rng.integers(0, 4)
        velocity = rng.uniform(*SPEEDS[speed]) * size[0] * np.array([np.cos(angle), np.sin(angle)])
        times = _wall_hits(start, velocity, radius, span, duration)
        if _separated(times, first, last, min_gap):
            return start, velocity, times
    return None


def _balls_overlap(
    start: np.ndarray,
    velocity: np.ndarray,
    radius: float,
    frame_times: np.ndarray,
    width: int,
    height: int,
) -> bool:
    """Whether two balls come within a pixel of touching in some frame (occlusion hides motion)."""
    c = _fold(start, velocity, radius, frame_times, width, height)  # [F, 2, 2]
    return bool(np.min(np.linalg.norm(c[:, 0] - c[:, 1], axis=-1)) < 2 * radius + 1)


def draw_scene(
    rng: np.random.Generator,
    fps: float,
    num_frames: int,
    height: int,
    width: int,
    radius_fraction: float = RADIUS_FRACTION,
    palette: tuple[str, ...] = WORLD_COLORS,
    max_balls: int = 2,
) -> Scene:
    """Rejection-sample a scene whose every bounce is recoverable from frames and from audio.

    A bounce needs a clean frame on either side to be seen (eval/sync.py), so bounces lie within
    [1, F - 2] frame periods; events are two frames apart so neither modality merges them.
    Balls are drawn one by one, then redrawn together until their events interleave cleanly.
    A clip has 1 to `max_balls` (1 or 2) balls, their colours drawn from `palette` (names of
    PALETTE), distinct within a clip.
    """
    radius = radius_fraction * min(height, width)
    size = np.array([width, height], np.float64)
    duration = num_frames / fps
    window = (1.0 / fps, (num_frames - 2) / fps, 2.0 / fps)  # first, last, min gap
    num_balls = int(rng.integers(1, min(max_balls, len(palette)) + 1))
    colors = tuple(palette[i] for i in rng.choice(len(palette), num_balls, replace=False))
    speed = str(rng.choice(list(SPEEDS)))
    for _ in range(MAX_TRIES):
        balls = [_draw_ball(rng, speed, radius, size, duration, *window) for _ in range(num_balls)]
        if any(b is None for b in balls):
            break
        start, velocity = np.stack([b[0] for b in balls]), np.stack([b[1] for b in balls])
        times = np.concatenate([b[2] for b in balls])
        owner = np.concatenate([np.full(len(b[2]), i, np.int32) for i, b in enumerate(balls)])
        order = np.argsort(times)
        if _separated(times[order], *window) and not (
            num_balls == 2
            and _balls_overlap(start, velocity, radius, np.arange(num_frames) / fps, width, height)
        ):
            return Scene(colors, speed, radius, start, velocity, times[order], owner[order])
    raise ValueError(
        f"sounding shapes: no clip with separable bounces in {MAX_TRIES} draws for fps={fps}, "
        f"num_frames={num_frames}, {height}x{width}: every ball must bounce within frames "
        f"[1, num_frames - 2] with all bounces two frames apart; lengthen short clips, shorten "
        f"long ones, raise fps or shrink data.ball_radius={radius_fraction}"
    )


def render_video(scene: Scene, fps: float, num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames [F, H, W, 3] in [-1, 1]: anti-aliased discs (coverage ~ 1 px soft edge)."""
    centres = ball_centres(scene, np.arange(num_frames) / fps, width, height)  # [F, N, 2]
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    frames = np.broadcast_to(np.asarray(BACKGROUND, np.float64), (num_frames, height, width, 3))
    for ball, name in enumerate(scene.colors):
        cx = centres[:, ball, 0, None, None]
        cy = centres[:, ball, 1, None, None]
        dist = np.hypot(xs[None] - cx, ys[None] - cy)  # [F, H, W]
        alpha = np.clip(scene.radius + 0.5 - dist, 0.0, 1.0)[..., None]
        frames = frames * (1 - alpha) + alpha * np.asarray(PALETTE[name][0])
    return (frames * 2 - 1).astype(np.float32)


def render_audio(scene: Scene, num_samples: int, sample_rate: int) -> np.ndarray:
    """Waveform [S] in [-1, 1]: one decaying tone (fundamental + octave) per bounce, started at
    the exact bounce time, so onsets are sample-accurate."""
    audio = np.zeros(num_samples, np.float64)
    length = int(TONE_LENGTH * sample_rate)
    for t, ball in zip(scene.bounce_times, scene.bounce_balls):
        n0 = int(np.ceil(t * sample_rate))
        n = np.arange(n0, min(n0 + length, num_samples))
        s = n / sample_rate - t  # seconds since the bounce, >= 0
        pitch = PALETTE[scene.colors[ball]][1]
        env = np.minimum(1.0, s / TONE_ATTACK) * np.exp(-s / TONE_DECAY)
        wave = np.sin(2 * np.pi * pitch * s) + 0.3 * np.sin(4 * np.pi * pitch * s)
        audio[n] += TONE_AMPLITUDE * env * wave
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def captions(scene: Scene) -> tuple[str, str]:
    """(video caption, audio caption): colours and speed in words ('a red ball bounces fast')."""
    balls = " and ".join(f"a {c} ball" for c in scene.colors)
    verb = "bounces" if len(scene.colors) == 1 else "bounce"
    tones = " and a ".join(scene.colors)
    return f"{balls} {verb} {scene.speed}", f"bouncing tones of a {tones} ball"


class SoundingShapes:
    """Random-access source (grain protocol) of sounding-shapes clips; index -> the same clip.

    Each index draws from `np.random.default_rng([seed, index])`, so clips are independent of
    access order and of worker process, and (seed, index) pairs never collide.
    """

    def __init__(
        self,
        num_clips: int,
        fps: float,
        num_frames: int,
        height: int,
        width: int,
        sample_rate: int,
        seed: int = 0,
        radius_fraction: float = RADIUS_FRACTION,
        colors: Sequence[str] = WORLD_COLORS,
        max_balls: int = 2,
    ):
        if not is_palette(colors):
            unknown = [c for c in colors if c not in PALETTE]
            raise ValueError(
                f"sounding shapes: colours {tuple(colors)} (data.colors) must be distinct names "
                f"of the palette {COLOR_NAMES}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        self.colors = tuple(colors)
        if max_balls not in (1, 2):
            raise ValueError(f"sounding shapes: max_balls={max_balls} (data.max_balls): 1 or 2")
        self.max_balls = int(max_balls)
        if num_frames < 4:
            raise ValueError(f"sounding shapes: num_frames={num_frames}, need >= 4 for a bounce")
        if not 0 < radius_fraction < 0.25:  # two balls must fit side by side with room to move
            raise ValueError(
                f"sounding shapes: ball radius {radius_fraction} of the frame's short side "
                f"(data.ball_radius) must be in (0, 0.25)"
            )
        self.radius_fraction = float(radius_fraction)
        self.num_clips = num_clips
        self.fps = float(fps)
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.sample_rate = sample_rate
        self.seed = seed
        self.num_samples = round(num_frames / self.fps * sample_rate)

    def __len__(self) -> int:
        return self.num_clips

    def __repr__(self) -> str:
        return (
            f"SoundingShapes(num_clips={self.num_clips}, fps={self.fps}, "
            f"num_frames={self.num_frames}, height={self.height}, width={self.width}, "
            f"sample_rate={self.sample_rate}, seed={self.seed}, "
            f"radius_fraction={self.radius_fraction}, colors={self.colors}, "
            f"max_balls={self.max_balls})"
        )

    @classmethod
    def like(cls, world: Any, num_clips: int, seed: int) -> SoundingShapes:
        """The world `world` describes (`config.data` or a system's ClipGeometry: its geometry,
        ball radius, colours and ball count), `num_clips` clips of it drawn from `seed`."""
        return cls(
            num_clips,
            float(world.fps),
            int(world.num_frames),
            int(world.height),
            int(world.width),
            int(world.sample_rate),
            seed=seed,
            radius_fraction=float(world.ball_radius),
            colors=tuple(world.colors),
            max_balls=int(world.max_balls),
        )

    def scene(self, index: int) -> Scene:
        """The clip's balls and exact bounces, without rendering (for tests and analysis)."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"sounding shapes: index {index} outside [0, {self.num_clips})")
        rng = np.random.default_rng([self.seed, int(index)])
        return draw_scene(
            rng,
            self.fps,
            self.num_frames,
            self.height,
            self.width,
            self.radius_fraction,
            self.colors,
            self.max_balls,
        )

    def __getitem__(self, index: int) -> dict[str, np.ndarray | str]:
        """The rendered clip: video, audio, captions, padded ground-truth bounce times."""
        scene = self.scene(index)
        video = render_video(scene, self.fps, self.num_frames, self.height, self.width)
        video_caption, audio_caption = captions(scene)
        num_bounces = len(scene.bounce_times)
        if num_bounces > MAX_EVENTS:
            raise ValueError(
                f"sounding shapes: clip {index} has {num_bounces} bounces, more than "
                f"MAX_EVENTS={MAX_EVENTS}; use shorter clips"
            )
        bounce_times = np.full(MAX_EVENTS, -1.0, np.float32)
        bounce_times[:num_bounces] = scene.bounce_times
        return {
            "video": video,  # [F, H, W, 3] in [-1, 1]
            "audio": render_audio(scene, self.num_samples, self.sample_rate),  # [S]
            "video_caption": video_caption,
            "audio_caption": audio_caption,
            "transcript": "",
            "bounce_times": bounce_times,  # [MAX_EVENTS] seconds, -1 = padding
            "num_bounces": np.int32(num_bounces),
            "ref_frame": video[0],  # [H, W, 3]
        }
