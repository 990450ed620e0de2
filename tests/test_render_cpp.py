"""The compiled CPU rasterizer (backend "cpp") against the pure-PyTorch reference (backend "torch")."""

import warnings

import pytest
import torch
from test_render import look_at

import l2s_optim.render as render_module
from l2s_optim.render import cpp, cpp_available, rasterization


def hard_scene(n=200, dtype=torch.float64, seed=0, sh_degree=None, channels=3, n_cameras=4, backgrounds=True,
               per_camera_colours=False, size=1.0):
    """Anisotropic Gaussians, some nearly opaque (the early stop is hit) or clamped at alpha 0.999, a few behind
    a camera, off-screen or larger than the image, seen by several cameras in 30x70 views (5 row bands).
    SH colours always carry 16 coefficients (degree 3), whatever ``sh_degree`` renders."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.5
    means[:5] = means[:5] * 0.1 + torch.tensor([4.0, 0.0, 0.0], dtype=dtype)  # behind camera 0 (it sits at x=2.5)
    means[5:10] += torch.tensor([0.0, 30.0, 0.0], dtype=dtype)  # off-screen
    scales = (torch.rand(n, 3, generator=g, dtype=dtype) * 0.12 + 0.005) * size
    scales[:, 0] *= 3  # anisotropic
    scales[10:12] = 5.0  # larger than the image
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.7 + 0.05
    opacities[::3] = 0.995  # near-opaque: transmittance reaches 1e-4
    opacities[10:12] = 0.1  # the two larger than the image
    opacities[1::7] = 0.9995  # alpha clamped at 0.999 near their centres
    if sh_degree is not None:
        colors = torch.randn(n, 16, 3, generator=g, dtype=dtype) * 0.3
    elif per_camera_colours:
        colors = torch.rand(n_cameras, n, channels, generator=g, dtype=dtype)
    else:
        colors = torch.rand(n, channels, generator=g, dtype=dtype)
    eyes = [(2.5, 0.3, 0.4), (-0.5, 2.2, -0.8), (0.3, -2.4, 1.0), (1.5, 1.5, 1.5), (-2.0, -1.0, 0.5)]
    viewmats = torch.stack([look_at(e) for e in eyes[:n_cameras]]).to(dtype)
    Ks = torch.tensor([[36.0, 0.0, 15.5], [0.0, 38.0, 35.0], [0.0, 0.0, 1.0]], dtype=dtype).expand(n_cameras, 3, 3)
    tensors = {"means": means, "quats": torch.randn(n, 4, generator=g, dtype=dtype), "scales": scales,
               "opacities": opacities, "colors": colors}
    if backgrounds:
        tensors["backgrounds"] = torch.rand(n_cameras, colors.shape[-1], generator=g, dtype=dtype)
    return {k: v.requires_grad_(True) for k, v in tensors.items()}, viewmats, Ks.contiguous(), 30, 70


def render(s, viewmats, Ks, width, height, backend, sh_degree=None):
    return rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, width,
                         height, backgrounds=s.get("backgrounds"), sh_degree=sh_degree, backend=backend)


def image_and_gradients(s, viewmats, Ks, w, h, backend, sh_degree=None, projection_outputs=True):
    """Images, alphas, info and the gradients of a random weighting of images, alphas and (optionally) the
    projection's outputs (means2d, conics, depths: every Gaussian, culled ones included)."""
    images, alphas, info = render(s, viewmats, Ks, w, h, backend, sh_degree)
    info["means2d"].retain_grad()
    g = torch.Generator().manual_seed(1)
    outputs = [images, alphas] + ([info["means2d"], info["conics"], info["depths"]] if projection_outputs else [])
    loss = sum((t * torch.rand(t.shape, generator=g, dtype=t.dtype)).sum() for t in outputs)
    grads = torch.autograd.grad(loss, list(s.values()) + [info["means2d"]])
    return images.detach(), alphas.detach(), info, grads


def test_ci_runs_the_compiled_backend(monkeypatch):
    """Fails where the extension does not build: CI must not pass on the pure-PyTorch fallback."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpp_available()
    monkeypatch.setattr(render_module, "rasterize_cpu", None)  # "auto" on CPU tensors must not need it
    s, viewmats, Ks, w, h = hard_scene(20)
    images, _, _ = render(s, viewmats, Ks, w, h, "auto")
    assert images.shape == (4, h, w, 3)


@pytest.mark.parametrize("dtype, image_tol, grad_tol", [(torch.float64, 1e-10, 1e-8), (torch.float32, 2e-6, 5e-5)])
@pytest.mark.parametrize("sh_degree, channels, options", [
    (None, 3, {}), (3, 3, {}), (1, 3, {"backgrounds": False}), (None, 1, {}), (None, 5, {"per_camera_colours": True}),
])
def test_cpp_matches_torch_reference(dtype, image_tol, grad_tol, sh_degree, channels, options):
    """Same dtype on both sides: float32 and float64 can take different discrete decisions (a footprint edge,
    the 1/255 cut, the early stop), so each is compared with the reference in its own precision. The loss
    includes the conics of tiny Gaussians (~1/eps2d), ill-conditioned in float32: 5e-5 there, and 1e-5 for
    image and alpha losses (test_float32_image_gradients_within_1e-5)."""
    s, viewmats, Ks, w, h = hard_scene(dtype=dtype, sh_degree=sh_degree, channels=channels, **options)
    ours = image_and_gradients(s, viewmats, Ks, w, h, "cpp", sh_degree)
    ref = image_and_gradients(s, viewmats, Ks, w, h, "torch", sh_degree)
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=image_tol)
    torch.testing.assert_close(ours[1], ref[1], rtol=0, atol=image_tol)
    assert (ref[1] > 1 - 1e-3).any(), "the early stop at transmittance 1e-4 is not exercised"
    assert (ref[1] < 0.5).any(), "everything opaque: not a real picture"
    assert torch.equal(ours[2]["radii"], ref[2]["radii"])
    assert (ref[2]["radii"][0, :10] == 0).all()  # behind camera 0, off its screen
    for key in ("means2d", "conics", "depths"):
        torch.testing.assert_close(ours[2][key], ref[2][key], rtol=grad_tol, atol=image_tol, msg=key)
    for name, a, b in zip([*s, "means2d"], ours[3], ref[3]):
        scale = b.abs().max()
        assert scale > 0, name
        torch.testing.assert_close(a, b, rtol=grad_tol, atol=grad_tol * scale, msg=name)


def test_float32_gradients_within_1e_5():
    """Image and alpha losses against the float32 reference (plain colours); projection outputs against the
    float64 reference, where no discrete decision can differ (float32 SH-colour gradients through conics carry
    the reference's own rounding of ~3e-5, hence 5e-5 above)."""
    s, viewmats, Ks, w, h = hard_scene(dtype=torch.float32)
    ours = image_and_gradients(s, viewmats, Ks, w, h, "cpp", projection_outputs=False)
    ref = image_and_gradients(s, viewmats, Ks, w, h, "torch", projection_outputs=False)
    for name, a, b in zip([*s, "means2d"], ours[3], ref[3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max(), msg=name)
    exact = {k: v.detach().double().requires_grad_(True) for k, v in s.items()}
    for tensors, dtype in ((s, torch.float32), (exact, torch.float64)):
        _, _, info = render(tensors, viewmats.to(dtype), Ks.to(dtype), w, h, "cpp" if dtype == torch.float32 else "torch")
        g = torch.Generator().manual_seed(2)
        loss = sum((info[k] * torch.rand(info[k].shape, generator=g).to(dtype)).sum() for k in ("means2d", "conics"))
        grads = torch.autograd.grad(loss, [tensors[k] for k in ("means", "quats", "scales")])
        if dtype == torch.float32:
            ours = grads
    for name, a, b in zip(("means", "quats", "scales"), ours, grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * b.abs().max(), msg=name)


@pytest.mark.parametrize("sh_degree", [None, 2])
def test_cpp_gradients_match_finite_differences(sh_degree):
    """Hand-written backward passes against finite differences, for images, alphas and the projection's outputs.
    With SH colours the means are held fixed: the view direction is a constant to the renderers (as before)."""
    s, viewmats, _, _, _ = hard_scene(12, n_cameras=2, sh_degree=sh_degree, seed=2)
    Ks = torch.tensor([[24.0, 0.0, 8.0], [0.0, 24.0, 17.0], [0.0, 0.0, 1.0]], dtype=torch.float64).expand(2, 3, 3)
    with torch.no_grad():
        s["means"][:12] = s["means"][:12] * 0.3  # all in view; none behind, off-screen or huge
        s["scales"][:12] = s["scales"][:12].clamp_max(0.2)
        s["opacities"].clamp_(max=0.8)  # clear of the 0.999 clamp and the early stop, where alpha is not differentiable
    varied = [k for k in s if not (sh_degree and k == "means")]

    def fn(*tensors):
        images, alphas, info = render({**s, **dict(zip(varied, tensors))}, viewmats, Ks, 16, 34, "cpp", sh_degree)
        return images, alphas, info["means2d"], info["conics"], info["depths"]

    _, alphas, means2d, _, _ = fn(*(s[k] for k in varied))
    assert (alphas > 0.05).float().mean() > 0.1 and ((means2d[..., 1] > 16) & (means2d[..., 1] < 34)).sum() >= 3
    assert torch.autograd.gradcheck(fn, tuple(s[k] for k in varied), eps=1e-7, atol=1e-5, rtol=1e-4)


def test_gradients_are_bit_identical_at_any_thread_count():
    s, viewmats, Ks, w, h = hard_scene(3000, dtype=torch.float32, size=0.3)  # > 2048: projection splits too
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(image_and_gradients(s, viewmats, Ks, w, h, "cpp"))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0])
        for a, b in zip(results[0][3], other[3]):
            assert torch.equal(a, b)


def test_no_gaussians_give_the_background():
    s, viewmats, Ks, w, h = hard_scene(0)
    images, alphas, info = render(s, viewmats, Ks, w, h, "cpp")
    torch.testing.assert_close(images, s["backgrounds"][:, None, None].expand_as(images))
    assert alphas.abs().max() == 0 and info["means2d"].shape == (4, 0, 2)
    grads = torch.autograd.grad(images.sum(), [s["means"], s["backgrounds"]])
    assert grads[0].shape == (0, 3) and torch.equal(grads[1], torch.full_like(grads[1], w * h))


def test_non_contiguous_inputs_are_handled():
    s, viewmats, Ks, w, h = hard_scene(50)
    strided = {k: v.detach().t().contiguous().t() if v.ndim == 2 else v.detach() for k, v in s.items()}
    assert not strided["means"].is_contiguous()
    torch.testing.assert_close(render(strided, viewmats, Ks, w, h, "cpp")[0], render(s, viewmats, Ks, w, h, "cpp")[0])


def test_bad_inputs_are_named():
    s, viewmats, Ks, w, h = hard_scene(20)
    args = [s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, w, h]
    for index, name, bad in [(1, "quats", s["quats"].long()), (3, "opacities", s["opacities"].float()),
                             (5, "viewmats", viewmats.to("meta"))]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(ValueError, match=name):
            rasterization(*broken, backend="cpp")
    half = [t.detach().half() if isinstance(t, torch.Tensor) else t for t in args]
    with pytest.raises(ValueError, match="float32 or float64"):
        rasterization(*half, backend="cpp")
    for index, name, bad in [(0, "means", s["means"][:, :2]), (1, "quats", s["quats"][:-1]),
                             (2, "scales", s["scales"][:, :2]), (3, "opacities", s["opacities"][:, None]),
                             (4, "colors", s["colors"][None].expand(3, -1, -1)), (6, "Ks", Ks[:, :2])]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(ValueError, match=name):
            rasterization(*broken, backend="cpp")
    with pytest.raises(ValueError, match="backgrounds"):
        rasterization(*args, backgrounds=s["backgrounds"][:, :2], backend="cpp")
    with pytest.raises(ValueError, match="at least one camera"):
        rasterization(*args[:5], viewmats[:0], Ks[:0], *args[7:], backend="cpp")
    with pytest.raises(ValueError, match="sh_degree must be an integer"):
        rasterization(*args, sh_degree=1.5, backend="cpp")
    with pytest.raises(ValueError, match="colors"):
        rasterization(*args, sh_degree=1, backend="cpp")
    with pytest.raises(ValueError, match="viewmats or Ks"):
        rasterization(*args[:5], viewmats.clone().requires_grad_(True), *args[6:], backend="cpp")
    with pytest.raises(ValueError, match="render backend"):
        rasterization(*args, backend="cpu")


def test_camera_gradients_fall_back_to_torch():
    s, viewmats, Ks, w, h = hard_scene(20, n_cameras=2)
    viewmats = viewmats.clone().requires_grad_(True)
    images, _, _ = render(s, viewmats, Ks, w, h, "auto")
    assert torch.autograd.grad(images.sum(), viewmats)[0].abs().sum() > 0


def test_a_build_failure_warns_once_and_falls_back(monkeypatch):
    def broken_build():
        raise RuntimeError("Error building extension 'l2s_optim_rasterize'\nrasterize.cpp:1: error: boom")

    monkeypatch.setattr(cpp, "extension", broken_build)
    cpp_available.cache_clear()
    try:
        s, viewmats, Ks, w, h = hard_scene(20)
        with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch one.*boom"):
            fallback, _, _ = render(s, viewmats, Ks, w, h, "auto")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            render(s, viewmats, Ks, w, h, "auto")
        torch.testing.assert_close(fallback, render(s, viewmats, Ks, w, h, "torch")[0])
    finally:
        cpp_available.cache_clear()


def test_environment_variable_forces_the_reference(monkeypatch):
    monkeypatch.setenv("L2S_OPTIM_RENDER_BACKEND", "torch")
    monkeypatch.setattr(cpp, "rasterize_cpp", None)
    s, viewmats, Ks, w, h = hard_scene(20)
    assert render(s, viewmats, Ks, w, h, "auto")[0].shape == (4, h, w, 3)
    monkeypatch.setenv("L2S_OPTIM_RENDER_BACKEND", "fast")
    with pytest.raises(ValueError, match="L2S_OPTIM_RENDER_BACKEND"):
        render(s, viewmats, Ks, w, h, "auto")
