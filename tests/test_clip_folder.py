"""Clip-folder source: decoding, fps / size / rate conversion, alignment, bad files and lines."""

import json
import logging
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harmony_jax.data.clip_folder import ClipFolder, read_captions
from harmony_jax.errors import DataError
from harmony_jax.media import MediaError, write_av

SR = 16000
SHAPE = dict(fps=8.0, num_frames=16, height=16, width=16, sample_rate=SR)


def _make_clip(path, *, fps, num_frames, rate=SR, channels=1, audio=True):
    """Frame i has brightness level(i), its outer columns are red (cropped away), and the audio
    has a click at 1.0 s."""
    level = np.linspace(-0.8, 0.8, num_frames)
    video = np.broadcast_to(level[:, None, None, None], (num_frames, 24, 32, 3)).copy()
    video[:, :, :4] = video[:, :, -4:] = (1.0, -1.0, -1.0)
    wave = np.zeros((int(num_frames / fps * rate), channels), np.float32)
    wave[rate : rate + 32] = 0.8
    write_av(path, video.astype(np.float32), fps, wave if audio else None, rate)


def _write_captions(root, lines):
    (root / "captions.jsonl").write_text(
        "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    _make_clip(root / "good.mp4", fps=8.0, num_frames=16)
    _make_clip(root / "noaudio.mp4", fps=8.0, num_frames=16, audio=False)
    _make_clip(root / "full.mp4", fps=8.0, num_frames=16)
    data = (root / "full.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "sub").mkdir()
    _make_clip(root / "sub" / "fast.mp4", fps=16.0, num_frames=40, rate=24000, channels=2)
    _write_captions(
        root,
        [
            dict(
                path="good.mp4",
                video_caption="a grey square",
                audio_caption="a click",
                transcript="hello",
            ),
            dict(path="noaudio.mp4", video_caption="v", audio_caption="a"),
            "",  # blank lines are fine
            dict(path="truncated.mp4", video_caption="v", audio_caption="a"),
            dict(path="sub/fast.mp4", video_caption="fast", audio_caption="fast click"),
        ],
    )
    return root


def test_item_layout_and_alignment(folder):
    source = ClipFolder(str(folder), **SHAPE)
    assert len(source) == 4
    item = source[0]
    assert item["video"].shape == (16, 16, 16, 3) and item["video"].dtype == np.float32
    assert item["audio"].shape == (2 * SR,) and item["audio"].dtype == np.float32
    assert (item["video_caption"], item["audio_caption"], item["transcript"]) == (
        "a grey square",
        "a click",
        "hello",
    )
    assert source[3]["transcript"] == ""
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    red = item["video"][..., 0] - item["video"][..., 1]
    assert np.abs(red).max() < 0.1  # the red side bars are centre-cropped away
    np.testing.assert_allclose(item["video"][:, 8, 8, 1], np.linspace(-0.8, 0.8, 16), atol=0.03)
    assert abs(np.argmax(item["audio"] > 0.3) / SR - 1.0) < 0.003


def test_fps_and_sample_rate_conversion(folder):
    item = ClipFolder(str(folder), **SHAPE)[3]  # 16 fps, 24 kHz stereo source
    # Output frame i covers [i, i + 1) / 8 s: source frame 2i + 1 has the nearest centre.
    expected = np.linspace(-0.8, 0.8, 40)[2 * np.arange(16) + 1]
    np.testing.assert_allclose(item["video"][:, 8, 8, 1], expected, atol=0.03)
    assert item["audio"].shape == (2 * SR,)
    assert abs(np.argmax(item["audio"] > 0.3) / SR - 1.0) < 0.003


@pytest.mark.parametrize(
    "index, message", [(1, "noaudio.mp4: no audio stream"), (2, "truncated.mp4")]
)
def test_bad_clip_errors_name_the_file(folder, index, message):
    with pytest.raises(MediaError, match=message):
        ClipFolder(str(folder), **SHAPE)[index]


def test_skip_bad_files_uses_next_good_clip(folder, caplog):
    source = ClipFolder(str(folder), skip_bad_files=True, **SHAPE)
    with caplog.at_level(logging.WARNING):
        item = source[1]
    assert item["video_caption"] == "fast"  # 1 and 2 are bad: the next good one is 3
    assert "noaudio.mp4" in caplog.text and "truncated.mp4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert source[2]["video_caption"] == "fast"  # deterministic, warned only once
    assert caplog.text == ""


def test_short_clip_is_an_error(folder):
    with pytest.raises(
        MediaError,
        match=r"good.mp4: 2.000 s of video is shorter than 24 "
        r"frames at 8 fps \(3.000 s\)",
    ):
        ClipFolder(str(folder), **dict(SHAPE, num_frames=24)).load(0)


def test_all_bad_is_an_error(tmp_path):
    _make_clip(tmp_path / "silent.mp4", fps=8.0, num_frames=4, audio=False)
    _write_captions(tmp_path, [dict(path="silent.mp4", video_caption="v", audio_caption="a")])
    with pytest.raises(MediaError, match="no usable clip"):
        ClipFolder(str(tmp_path), skip_bad_files=True, **SHAPE)[0]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", r"captions.jsonl:2: bad line \(JSONDecodeError"),
        (
            '{"path": "x.mp4", "video_caption": "v"}',
            r"captions.jsonl:2: bad line \(KeyError: "
            r"'audio_caption'",
        ),
        ('["x.mp4"]', "captions.jsonl:2: bad line.*not a JSON object"),
        ('{"path": "x.mp4", "video_caption": "v", "audio_caption": 3}', ":2: .*must be strings"),
    ],
)
def test_bad_captions_line_names_file_and_line(tmp_path, bad_line, message):
    _write_captions(tmp_path, [dict(path="a.mp4", video_caption="v", audio_caption="a"), bad_line])
    with pytest.raises(ValueError, match=message):
        read_captions(str(tmp_path))


def test_missing_captions_file(tmp_path):
    with pytest.raises(DataError, match="captions.jsonl: no such file"):
        read_captions(str(tmp_path))


_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.lists(st.integers(), max_size=3),
)
_MALFORMED_LINES = st.one_of(
    st.binary(max_size=64),  # random bytes, often not UTF-8
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),  # rarely JSON
    st.dictionaries(
        st.sampled_from(["path", "video_caption", "audio_caption", "transcript", "other"]),
        _FIELD_VALUES,
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),  # fields missing or of the wrong type
    st.recursive(_FIELD_VALUES, lambda inner: st.lists(inner, max_size=3), max_leaves=8).map(
        lambda x: json.dumps(x).encode()
    ),  # JSON, but not an object
    st.integers(1, 5000).map(lambda n: b"[" * n),
)  # nested past what the parser can
_GOOD = json.dumps(dict(path="a.mp4", video_caption="v", audio_caption="a")).encode() + b"\n"


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=_MALFORMED_LINES)
def test_fuzzed_captions_line_is_a_clean_error(tmp_path, line):
    """Whatever a line holds, read_captions returns clips or raises ValueError naming the file
    and the line: never a traceback from inside the JSON or UTF-8 decoders."""
    (tmp_path / "captions.jsonl").write_bytes(_GOOD + line + b"\n")
    try:
        clips = read_captions(str(tmp_path))
    except ValueError as e:
        assert re.match(r".*captions\.jsonl:([2-9]|\d\d+): bad line \(\w+", str(e)), str(e)
    else:
        assert all(isinstance(c.video_caption, str) and isinstance(c.path, str) for c in clips)
