import torch
import torch.nn.functional as F

from l2s_optim.losses import ssim


def ssim_2d_window(a, b):
    """SSIM written out with the full 11x11 Gaussian window (sigma 1.5), one channel at a time."""
    x1d = torch.arange(11, dtype=a.dtype) - 5
    w1d = torch.exp(-(x1d**2) / (2 * 1.5**2))
    window = (w1d[:, None] * w1d[None, :]) / w1d.sum() ** 2
    values = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch][:, None], b[..., ch][:, None]  # [B,1,H,W]

        def blur(t):
            return F.conv2d(t, window[None, None])

        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
        c1, c2 = 0.01**2, 0.03**2
        values.append(((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    return torch.cat(values, 1).mean((1, 2, 3))


def test_separable_ssim_equals_the_2d_window():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 31, 3, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(ssim(a, b), ssim_2d_window(a, b), rtol=0, atol=1e-12)
    torch.testing.assert_close(ssim(a.float(), b.float()), ssim_2d_window(a, b).float(), rtol=0, atol=1e-6)
    assert ssim(a, a).sub(1).abs().max() < 1e-12 and ssim(a, b).max() < 0.9
