import functools
import math

import pytest
import torch

from l2s_optim.gaussians import quat_to_rotmat
from l2s_optim.render import rasterization
from l2s_optim.render.cpu import ALPHA_MAX, ALPHA_THRESHOLD, T_MIN, project, sh_basis, sh_to_rgb


def look_at(eye, target=(0.0, 0.0, 0.0)):
    """World-to-camera (OpenCV: x right, y down, z forward) looking from eye at target."""
    eye, target = torch.tensor(eye, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), dim=0)
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3], view[:3, 3] = rot, -rot @ eye
    return view


def scene(n=20, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = {
        "means": torch.randn(n, 3, generator=g, dtype=dtype) * 0.4,
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": torch.rand(n, 3, generator=g, dtype=dtype) * 0.15 + 0.03,
        "opacities": torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.15,
        "colors": torch.rand(n, 3, generator=g, dtype=dtype),
    }
    return {k: v.requires_grad_(True) for k, v in t.items()}


def cameras(width=24, height=20, dtype=torch.float64):
    viewmats = torch.stack([look_at((2.5, 0.3, 0.4)), look_at((-0.5, 2.2, -0.8))]).to(dtype)
    K = torch.tensor([[30.0, 0.0, 12.5], [0.0, 28.0, 9.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return viewmats, K.expand(2, 3, 3).clone(), width, height


def brute_force(s, viewmat, K, width, height):
    """gsplat's per-pixel loop, literally: Gaussians front to back, break when transmittance is done."""
    proj = project(s["means"], s["quats"], s["scales"], s["opacities"], viewmat, K, width, height, 0.01, 1e10, 0.3)
    order = torch.argsort(proj["depths"].detach()).tolist()
    image = []
    for py in range(height):
        for px in range(width):
            colour, T = torch.zeros(3, dtype=s["means"].dtype), torch.ones((), dtype=s["means"].dtype)
            for i in order:
                rx, ry = proj["radii"][i].tolist()
                mx, my = proj["means2d"][i].tolist()
                if rx == 0 or not (math.floor(mx - rx) <= px < math.ceil(mx + rx) and math.floor(my - ry) <= py < math.ceil(my + ry)):
                    continue
                a, b, c = proj["conics"][i]
                dx, dy = px + 0.5 - proj["means2d"][i][0], py + 0.5 - proj["means2d"][i][1]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = torch.clamp_max(s["opacities"][i] * torch.exp(-sigma), ALPHA_MAX)
                if sigma < 0 or alpha < ALPHA_THRESHOLD:
                    continue
                if T * (1 - alpha) <= T_MIN:
                    break
                colour = colour + alpha * T * s["colors"][i]
                T = T * (1 - alpha)
            image.append(colour)
    return torch.stack(image).reshape(height, width, 3)


def render(s, viewmats, Ks, width, height, **kw):
    return rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, width, height, **kw)


@functools.cache
def brute_force_reference() -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Images of scene() through cameras(), random loss weights, and the loss gradients (slow: computed once)."""
    s = scene()
    viewmats, Ks, w, h = cameras()
    reference = torch.stack([brute_force(s, viewmats[c], Ks[c], w, h) for c in range(2)])
    weights = torch.rand(reference.shape, generator=torch.Generator().manual_seed(0), dtype=reference.dtype)
    return reference.detach(), weights, torch.autograd.grad((reference * weights).sum(), list(s.values()))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_matches_brute_force_values_and_gradients(backend):
    s = scene()
    viewmats, Ks, w, h = cameras()
    images, alphas, _ = render(s, viewmats, Ks, w, h, backend=backend)
    reference, weights, theirs = brute_force_reference()
    torch.testing.assert_close(images, reference, rtol=1e-10, atol=1e-12)
    assert images.max() > 0.2 and (alphas > 0.5).float().mean() > 0.1  # a real picture, not background
    ours = torch.autograd.grad((images * weights).sum(), list(s.values()))
    for name, a, b in zip(s, ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


def test_row_bands_do_not_change_the_result():
    from l2s_optim.render.cpu import rasterize_cpu

    s = scene(40)
    viewmats, Ks, w, h = cameras()
    args = (s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, w, h)
    whole, _, _ = rasterize_cpu(*args)
    banded, _, _ = rasterize_cpu(*args, max_pairs=50)
    torch.testing.assert_close(whole, banded, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradients_match_finite_differences(backend):
    s = scene(6, seed=3)
    viewmats, Ks, w, h = cameras(12, 10)
    Ks[:, 0, 0], Ks[:, 1, 1] = 14.0, 13.0
    Ks[:, 0, 2], Ks[:, 1, 2] = 6.0, 5.0
    names = list(s)

    def fn(*tensors):
        images, alphas, _ = render(dict(zip(names, tensors)), viewmats, Ks, w, h, backend=backend)
        return images.sum(-1) + 0.5 * alphas[..., 0]

    assert torch.autograd.gradcheck(fn, tuple(s.values()), eps=1e-7, atol=1e-5, rtol=1e-4)


def test_ewa_covariance_matches_sampled_projection():
    """The projected 2D covariance (minus the low-pass) equals the covariance of projected 3D samples."""
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.1, -0.05, 0.0]], dtype=torch.float64)
    quats = torch.tensor([[0.9, 0.2, -0.3, 0.1]], dtype=torch.float64)
    scales = torch.tensor([[0.02, 0.01, 0.005]], dtype=torch.float64)
    viewmat, K = look_at((3.0, 0.5, 0.2)), torch.tensor([[300.0, 0, 160], [0, 310.0, 120], [0, 0, 1]], dtype=torch.float64)
    proj = project(means, quats, scales, torch.ones(1, dtype=torch.float64), viewmat, K, 320, 240, 0.01, 1e10, 0.0)
    rot = quat_to_rotmat(quats)[0]
    samples = means + (torch.randn(400_000, 3, generator=g, dtype=torch.float64) * scales) @ rot.T
    cam = samples @ viewmat[:3, :3].T + viewmat[:3, 3]
    pix = torch.stack([K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2], K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]], -1)
    a, b, c = proj["conics"][0]
    cov2d = torch.linalg.inv(torch.stack([torch.stack([a, b]), torch.stack([b, c])]))
    torch.testing.assert_close(torch.cov(pix.T), cov2d, rtol=0.02, atol=1e-3)
    torch.testing.assert_close(pix.mean(0), proj["means2d"][0], rtol=0, atol=0.01)


def test_sh_degree_zero_is_dc_colour_and_view_dependence():
    coeffs = torch.zeros(1, 16, 3)
    coeffs[0, 0] = torch.tensor([1.0, -0.5, 0.2])
    rgb = sh_to_rgb(coeffs, torch.tensor([[0.3, 0.4, 0.5]]), 3)
    torch.testing.assert_close(rgb[0], torch.clamp_min(coeffs[0, 0] * 0.28209479177387814 + 0.5, 0))
    coeffs[0, 1:4] = 0.3  # degree-1 terms change the colour with the direction
    assert not torch.allclose(sh_to_rgb(coeffs, torch.tensor([[1.0, 0, 0]]), 1), sh_to_rgb(coeffs, torch.tensor([[-1.0, 0, 0]]), 1))


def test_sh_basis_is_orthonormal_on_the_sphere():
    dirs = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=-1)
    basis = sh_basis(dirs, 3)
    gram = basis.T @ basis * (4 * math.pi / len(dirs))
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), rtol=0, atol=0.02)


def test_background_culling_and_info():
    s = scene()
    viewmats, Ks, w, h = cameras()
    background = torch.tensor([[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]], dtype=torch.float64)
    images, alphas, info = render(s, viewmats, Ks, w, h, backgrounds=background)
    plain, _, _ = render(s, viewmats, Ks, w, h)
    torch.testing.assert_close(images, plain + (1 - alphas) * background[:, None, None])
    assert info["means2d"].shape == (2, 20, 2) and info["radii"].shape == (2, 20, 2) and info["n_cameras"] == 2
    behind = {k: v.detach().clone() for k, v in s.items()}
    behind["means"] = behind["means"] + torch.tensor([10.0, 0, 0], dtype=torch.float64)  # behind camera 0
    images, alphas, info = render(behind, viewmats[:1], Ks[:1], w, h)
    assert alphas.max() == 0 and (info["radii"] == 0).all()


def test_means2d_gradient_for_densification():
    s = scene()
    viewmats, Ks, w, h = cameras()
    images, _, info = render(s, viewmats, Ks, w, h)
    info["means2d"].retain_grad()
    images.sum().backward()
    grad = info["means2d"].grad
    assert grad.shape == (2, 20, 2) and grad[(info["radii"] > 0).all(-1)].abs().sum() > 0


def test_bad_shapes_are_named():
    s = scene()
    viewmats, Ks, w, h = cameras()
    with pytest.raises(ValueError, match="opacities"):
        rasterization(s["means"], s["quats"], s["scales"], s["opacities"][:, None], s["colors"], viewmats, Ks, w, h)
    with pytest.raises(ValueError, match="viewmats"):
        rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats[:, :3], Ks, w, h)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matches_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    s = {k: v.detach().float().cuda().requires_grad_(True) for k, v in scene(300, dtype=torch.float32).items()}
    viewmats, Ks, _, _ = cameras(dtype=torch.float32)
    viewmats, Ks = viewmats.cuda(), Ks.cuda() * torch.tensor([[8.0], [8.0], [1.0]], device="cuda")
    ours, ours_alpha, _ = render(s, viewmats, Ks, 200, 160, backend="torch")
    theirs, theirs_alpha, _ = render(s, viewmats, Ks, 200, 160, backend="gsplat")
    assert (ours - theirs).abs().mean() < 2e-3 and (ours_alpha - theirs_alpha).abs().mean() < 2e-3
    g_ours = torch.autograd.grad(ours.sum(), list(s.values()))
    g_theirs = torch.autograd.grad(theirs.sum(), list(s.values()))
    for a, b in zip(g_ours, g_theirs):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
