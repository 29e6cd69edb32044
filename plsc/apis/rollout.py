"""Attention rollout (Abnar & Zuidema 2020): where a ViT looks."""
import numpy as np

from ..errors import ConfigError
from .classifier import require_dygraph


def attention_rollout(attn_list, num_prefix_tokens, discard_ratio=0.0, return_matrix=False):
    """Attention rollout (Abnar & Zuidema 2020) of per-layer attention probabilities.

    attn_list: per layer [B, H, N, N] (numpy or paddle), first layer first. Per layer: average
    the heads; optionally zero the smallest `discard_ratio` fraction of entries (per image,
    never the attention paid to prefix tokens, which would cut the class token off); add the
    identity (the residual path) and renormalise rows to 1. The rollout is the product
    A_L ... A_2 A_1 (row i: how much output token i draws from each input token).

    Returns the map [B, N - num_prefix_tokens] over the patch tokens: the class-token row for
    token models, the mean row over all tokens for gap models (num_prefix_tokens == 0).
    With return_matrix, (map, rollout [B, N, N]). Float64."""
    if not attn_list:
        raise ConfigError("attention_rollout needs at least one layer of attention")
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    prefix = int(num_prefix_tokens)
    joint = None
    for layer in attn_list:
        a = np.asarray(layer.numpy() if hasattr(layer, "numpy") else layer, dtype=np.float64)
        if a.ndim != 4 or a.shape[2] != a.shape[3]:
            raise ConfigError(f"attention must be [B, heads, N, N] per layer, got "
                              f"{list(a.shape)}")
        a = a.mean(axis=1)  # [B, N, N]
        b, n, _ = a.shape
        if discard_ratio > 0:
            cand = a[:, :, prefix:].reshape(b, -1).copy()
            k = int(discard_ratio * cand.shape[1])
            if k:
                drop = np.argsort(cand, axis=1, kind="stable")[:, :k]
                np.put_along_axis(cand, drop, 0.0, axis=1)
                a[:, :, prefix:] = cand.reshape(b, n, n - prefix)
        a = a + np.eye(n)
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a if joint is None else a @ joint
    rows = joint[:, 0, prefix:] if prefix else joint.mean(axis=1)
    return (rows, joint) if return_matrix else rows


def attention_map(model, image, discard_ratio=0.0):
    """(rollout map [h, w] over the patch grid, display image HWC uint8) for one image."""
    import paddle

    net = require_dygraph(model, "attention rollout")
    x = paddle.to_tensor(model.preprocess(image)[None])
    with paddle.no_grad():
        _, attns = net.forward_features(x, return_attn=True)
    rows = attention_rollout(attns, net.num_prefix_tokens, discard_ratio)
    gh, gw = net.patch_embed.grid_size
    return rows[0].reshape(gh, gw), model.preprocess.display_image(image)

