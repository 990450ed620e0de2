"""A synthetic checkpoint in the authors' released Lightning layout, and a plain-torch reference of
the released architecture written from its published description (not from our module)."""

import torch
import torch.nn.functional as F

PREFIX = "scene_trainer.optimizer."


def release_state(width=256, param_dim=59, depth=4, attn=64, hidden=1024, feature_dim=256, seed=0,
                  transformer="point_transformer", head="delta_head"):
    g = torch.Generator().manual_seed(seed)
    inp = 2 * param_dim + width
    shapes = {f"{transformer}.0.linear.weight": (width, inp), f"{transformer}.0.linear.bias": (width,)}
    for i in range(depth):
        b = f"{transformer}.1.blocks.{i}."
        shapes.update({
            b + "norm1.weight": (width,), b + "norm1.bias": (width,),
            b + "norm2.weight": (width,), b + "norm2.bias": (width,),
            b + "attn.qkv.weight": (3 * attn, width),
            b + "attn.proj.weight": (width, attn), b + "attn.proj.bias": (width,),
            b + "mlp.fc1.weight": (hidden, width), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (width, hidden), b + "mlp.fc2.bias": (width,),
        })
    shapes.update({
        "state_scale_head.0.weight": (inp // 2, inp), "state_scale_head.0.bias": (inp // 2,),
        "state_scale_head.2.weight": (1, inp // 2), "state_scale_head.2.bias": (1,),
        f"{head}.0.weight": (width, width), f"{head}.0.bias": (width,),
        f"{head}.2.weight": (param_dim + 1, width), f"{head}.2.bias": (param_dim + 1,),
    })
    if feature_dim:
        shapes.update({"state_proj.weight": (width, feature_dim, 1, 1), "state_proj.bias": (width,)})
    state = {PREFIX + k: torch.randn(s, generator=g) * (0.3 if len(s) > 1 else 0.1) for k, s in shapes.items()}
    state[PREFIX + "state_scale_head.2.bias"] = torch.ones(1)
    state["scene_trainer.initializer.backbone.weight"] = torch.randn(3, 3, generator=g)  # not ours: ignored
    return state


def release_forward(state, params, latent, grads, neighbours, depth):
    """The released step on A Gaussians with [A,k] neighbour lists, from the published facts."""
    w = lambda k: state[PREFIX + k]
    p = params.shape[1]
    x_in = torch.cat([params, latent, grads], 1)
    x = F.linear(x_in, w("point_transformer.0.linear.weight"), w("point_transformer.0.linear.bias"))
    for i in range(depth):
        b = f"point_transformer.1.blocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], w(b + "norm1.weight"), w(b + "norm1.bias"))
        q, k, v = F.linear(h, w(b + "attn.qkv.weight")).chunk(3, dim=-1)
        scores = (q[:, None, :] * k[neighbours]).sum(-1) * q.shape[-1] ** -0.5
        attended = (scores.softmax(-1)[..., None] * v[neighbours]).sum(1)
        x = x + F.linear(attended, w(b + "attn.proj.weight"), w(b + "attn.proj.bias"))
        h = F.layer_norm(x, x.shape[-1:], w(b + "norm2.weight"), w(b + "norm2.bias"))
        x = x + F.linear(F.gelu(F.linear(h, w(b + "mlp.fc1.weight"), w(b + "mlp.fc1.bias"))),
                         w(b + "mlp.fc2.weight"), w(b + "mlp.fc2.bias"))
    s = F.relu(F.linear(F.relu(F.linear(x_in, w("state_scale_head.0.weight"), w("state_scale_head.0.bias"))),
                        w("state_scale_head.2.weight"), w("state_scale_head.2.bias")))
    out = F.linear(F.gelu(F.linear(s * x, w("delta_head.0.weight"), w("delta_head.0.bias"))),
                   w("delta_head.2.weight"), w("delta_head.2.bias"))
    d, m = out[:, :p], out[:, p:]
    return F.relu(m) * d / (d.norm(dim=-1, keepdim=True) + 1e-8), x
