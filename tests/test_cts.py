"""Cross-Task-Synergy loss: task layout, clean driving modalities, and the loss formula."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmony_jax.diffusion.cts import cts_loss, task_sizes
from harmony_jax.model.conditioning import Conditioning

TV, H, W, CV, TA, CA = 3, 2, 2, 2, 5, 3


def make_cond(b):
    return Conditioning(
        video_text=jnp.ones((b, 4, 8)),
        video_text_mask=jnp.ones((b, 4), bool),
        audio_text=jnp.ones((b, 4, 8)),
        audio_text_mask=jnp.ones((b, 4), bool),
        transcript=jnp.ones((b, 6), jnp.int32),
        video_time=jnp.zeros((b, TV)),
        audio_time=jnp.zeros((b, TA)),
    )


def make_latents(b, seed=1):
    kv, ka = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kv, (b, TV, H, W, CV)), jax.random.normal(ka, (b, TA, CA))


def oracle_stub(video0, audio0, delta_v, delta_a, calls):
    """Predicts the true velocity plus a known offset where noised, and 1e3 where clean.

    The true velocity follows from the input: (x_t - x0) / sigma = e - x0. So every scored
    element has squared error delta**2, and any clean element that were scored would add 1e6.
    delta_v is [N, Tv] (per frame), delta_a is [N].
    """

    def denoise(x_v, x_a, t_v, t_a, cond):
        calls.append(dict(x_v=x_v, x_a=x_a, t_v=t_v, t_a=t_a, batch=cond.batch_size))
        s_v = (t_v / 1000.0)[:, :, None, None, None]
        s_a = (t_a / 1000.0)[:, :, None]
        v_v = (x_v - video0) / jnp.where(s_v > 0, s_v, 1.0) + delta_v[:, :, None, None, None]
        v_a = (x_a - audio0) / jnp.where(s_a > 0, s_a, 1.0) + delta_a[:, None, None]
        return jnp.where(s_v > 0, v_v, 1e3), jnp.where(s_a > 0, v_a, 1e3)

    return denoise


def jitted_loss(video0, audio0, delta_v, delta_a, b, rng, **kw):
    """cts_loss under jit (one compile, not one per op); also returns what the stub was fed
    and the conditioning batch size. Asserts the denoiser is called once."""
    calls = []
    # The oracle needs the clean latents row-aligned with the denoiser batch (3x in 'all').
    tiled = kw.get("mode") == "all"

    def f(video0, audio0, delta_v, delta_a, rng):
        rows = (lambda x: jnp.concatenate([x] * 3)) if tiled else (lambda x: x)
        denoise = oracle_stub(rows(video0), rows(audio0), delta_v, delta_a, calls)
        loss, metrics = cts_loss(denoise, video0, audio0, make_cond(b), rng, **kw)
        return loss, metrics, {k: v for k, v in calls[-1].items() if k != "batch"}

    out = jax.jit(f)(video0, audio0, delta_v, delta_a, rng)
    assert len(calls) == 1  # one denoiser call for all tasks (traced once)
    return out + (calls[0]["batch"],)


def test_task_sizes():
    split = functools.partial(task_sizes, mode="split", fractions=(0.5, 0.25, 0.25))
    assert [split(b) for b in (1, 2, 3, 4, 5, 8)] == [
        (1, 0, 0),
        (1, 1, 0),
        (1, 1, 1),
        (2, 1, 1),
        (3, 1, 1),
        (4, 2, 2),
    ]
    assert task_sizes(7, "split", (1.0, 0.0, 0.0)) == (7, 0, 0)
    assert task_sizes(6, "split", (2, 1, 1)) == (3, 2, 1)  # remainder ties go to the earlier task
    assert task_sizes(4, "all", (0.5, 0.25, 0.25)) == (4, 4, 4)
    assert task_sizes(4, "joint_only", (0.5, 0.25, 0.25)) == (4, 0, 0)
    with pytest.raises(ValueError, match="'split', 'all', 'joint_only'"):
        task_sizes(4, "joint", (0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="fractions"):
        task_sizes(4, "split", (0.5, 0.5))


def test_split_loss_hand_computed_and_driven_tasks_clean():
    # B=4 with fractions (.5, .25, .25): rows 0-1 joint, row 2 audio-driven, row 3 video-driven.
    video0, audio0 = make_latents(4)
    delta_v = jnp.array([1.0, 2.0, 3.0, 4.0])[:, None] * jnp.ones((1, TV))
    delta_a = jnp.array([2.0, 4.0, 6.0, 8.0])
    loss, m, c, cond_batch = jitted_loss(
        video0,
        audio0,
        delta_v,
        delta_a,
        4,
        jax.random.PRNGKey(0),
        mode="split",
        lambda_v=0.1,
        lambda_a=0.3,
        shift=5.0,
    )
    # joint: L_v = (1 + 4) / 2, L_a = (4 + 16) / 2; a2v: 0.1 * 3**2; v2a: 0.3 * 8**2.
    assert float(loss) == pytest.approx(2.5 + 10.0 + 0.9 + 19.2, rel=1e-4)
    assert float(m["loss"]) == float(loss)
    for key, want in [
        ("loss_joint_v", 2.5),
        ("loss_joint_a", 10.0),
        ("loss_a2v", 9.0),
        ("loss_v2a", 64.0),
    ]:
        assert float(m[key]) == pytest.approx(want, rel=1e-4), key

    assert c["x_v"].shape[0] == cond_batch == 4
    t_v, t_a = np.asarray(c["t_v"]), np.asarray(c["t_a"])
    assert np.all(t_v[:3] > 0) and np.all(t_a[[0, 1, 3]] > 0)
    np.testing.assert_array_equal(t_v[:2], t_a[:2, :TV])  # joint: one sigma for both
    assert np.all(t_a[2] == 0) and np.all(t_v[3] == 0)  # the driving modality is clean ...
    np.testing.assert_array_equal(c["x_a"][2], audio0[2])  # ... and fed exactly
    np.testing.assert_array_equal(c["x_v"][3], video0[3])
    assert np.all(t_v[2] == t_v[2, 0]) and np.all(t_a[3] == t_a[3, 0])  # one sigma per sample


@pytest.mark.parametrize("mode", ["all", "joint_only"])
def test_modes_with_reference_frame(mode):
    b = 2
    video0, audio0 = make_latents(b, seed=2)
    n = 3 * b if mode == "all" else b
    delta_v = jnp.arange(n * TV, dtype=jnp.float32).reshape(n, TV) / 4.0 - 1.0
    delta_a = jnp.arange(n, dtype=jnp.float32) + 0.5
    loss, m, c, cond_batch = jitted_loss(
        video0,
        audio0,
        delta_v,
        delta_a,
        b,
        jax.random.PRNGKey(3),
        mode=mode,
        lambda_v=0.1,
        lambda_a=0.3,
        shift=3.0,
        ref_image_prob=1.0,
    )
    assert c["x_v"].shape[0] == cond_batch == n
    # Every sample's first video frame is the clean reference at t=0 and unscored.
    assert np.all(np.asarray(c["t_v"])[:, 0] == 0)
    np.testing.assert_array_equal(c["x_v"][:, 0], np.tile(video0[:, 0], (n // b, 1, 1, 1)))
    dv, da = np.asarray(delta_v)[:, 1:] ** 2, np.asarray(delta_a) ** 2
    if mode == "all":  # rows [0, B) joint, [B, 2B) audio-driven, [2B, 3B) video-driven
        want = dv[:b].mean() + da[:b].mean() + 0.1 * dv[b : 2 * b].mean() + 0.3 * da[2 * b :].mean()
    else:
        want = dv.mean() + da.mean()
        assert float(m["loss_a2v"]) == 0.0 and float(m["loss_v2a"]) == 0.0
    assert float(loss) == pytest.approx(want, rel=1e-4)
    assert float(m["ref_image_frac"]) == 1.0


def test_jit_grad_and_rng():
    b = 4
    video0, audio0 = make_latents(b)
    cond = make_cond(b)

    def loss_fn(w, rng):
        def denoise(x_v, x_a, t_v, t_a, cond):
            return w * x_v, w * x_a

        return cts_loss(
            denoise, video0, audio0, cond, rng, mode="split", shift=5.0, ref_image_prob=0.5
        )

    f = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (l0, m0), g0 = f(jnp.float32(0.3), jax.random.PRNGKey(0))
    (l1, _), _ = f(jnp.float32(0.3), jax.random.PRNGKey(0))
    (l2, _), _ = f(jnp.float32(0.3), jax.random.PRNGKey(1))
    assert float(l0) == float(l1) != float(l2)
    assert np.isfinite(float(g0)) and float(g0) != 0.0
    assert set(m0) >= {"loss", "loss_joint_v", "loss_joint_a", "loss_a2v", "loss_v2a"}
    assert all(v.shape == () for v in m0.values())


def test_x0_loss_weights_each_frame_by_its_sigma_squared():
    """The x0 error of a velocity off by delta is sigma * delta: the loss is sigma^2 delta^2."""
    video0, audio0 = make_latents(4)
    delta_v = jnp.full((4, TV), 2.0)
    delta_a = jnp.full((4,), 3.0)
    _, m, c, _ = jitted_loss(
        video0, audio0, delta_v, delta_a, 4, jax.random.PRNGKey(5), mode="joint_only", loss="x0"
    )
    sigma = np.asarray(c["t_v"])[:, 0] / 1000.0  # [4], one per sample
    assert float(m["loss_joint_v"]) == pytest.approx(4.0 * np.mean(sigma**2), rel=1e-4)
    assert float(m["loss_joint_a"]) == pytest.approx(9.0 * np.mean(sigma**2), rel=1e-4)
    with pytest.raises(ValueError, match="'velocity', 'x0'"):
        cts_loss(None, video0, audio0, make_cond(4), jax.random.PRNGKey(0), loss="v")
