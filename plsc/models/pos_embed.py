"""Resizing a learned position embedding to a new token grid (fine-tuning at another resolution).

Two algorithms, because the ecosystem uses both and they differ by O(1) on random grids:

  'bilinear' (default) - the official ViT fine-tuning code: `scipy.ndimage.zoom(order=1)` on the
      (h, w, D) grid, i.e. separable linear interpolation with align_corners=True (the corner
      embeddings are kept exactly). Computed here in float64 numpy, no scipy needed.
  'bicubic' - PLSC / timm style: `F.interpolate(mode='bicubic', align_corners=False)` (Paddle's
      cubic convolution, a=-0.75), computed with Paddle so it matches PLSC bit for bit.

Prefix rows (the class token's position) are never resized. This is an offline, one-time weight
transform: no gradients flow through it.
"""
import numpy as np

from ..errors import ConfigError

METHODS = ("bilinear", "bicubic")


def linear_resize_matrix(n_in, n_out):
    """[n_out, n_in] weights of 1-D linear interpolation with align_corners=True.

    Output i samples input position i * (n_in - 1) / (n_out - 1), exactly like
    scipy.ndimage.zoom(order=1) (which also maps a 1-long output to position 0).
    """
    m = np.zeros((n_out, n_in))
    if n_in == 1:
        m[:, 0] = 1.0
        return m
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    i0 = np.clip(np.floor(src).astype(int), 0, n_in - 2)
    frac = src - i0
    rows = np.arange(n_out)
    m[rows, i0] += 1.0 - frac
    m[rows, i0 + 1] += frac
    return m


def _resize_grid_bilinear(grid, new_grid):
    """grid [h, w, D] float64 -> [h', w', D]; separable, so two small matrix products."""
    mh = linear_resize_matrix(grid.shape[0], new_grid[0])
    mw = linear_resize_matrix(grid.shape[1], new_grid[1])
    return np.einsum("ih,hwd,jw->ijd", mh, grid, mw, optimize=True)


def _resize_grid_bicubic(grid, new_grid):
    import paddle
    import paddle.nn.functional as F
    x = paddle.to_tensor(np.ascontiguousarray(grid.transpose(2, 0, 1)[None], np.float32))
    y = F.interpolate(x, size=list(new_grid), mode="bicubic", align_corners=False)
    return y.numpy()[0].transpose(1, 2, 0).astype(np.float64)


def resize_pos_embed(pe, new_grid, num_prefix_tokens=1, method="bilinear", old_grid=None):
    """Resize pos-embedding `pe` [1, prefix + h*w, D] to the grid `new_grid` (h', w').

    `pe` may be a numpy array or a paddle Tensor; the result has the same type and dtype.
    `old_grid` defaults to the square grid implied by the row count. Returns `pe` itself when
    the grid already matches.
    """
    if method not in METHODS:
        raise ConfigError(f"pos_embed_interp must be one of {', '.join(METHODS)}, got {method!r}")
    is_numpy = isinstance(pe, np.ndarray)
    arr = pe if is_numpy else pe.astype("float32").numpy()
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise ConfigError(f"pos_embed has shape {tuple(arr.shape)}, expected [1, tokens, dim]")
    n_grid = arr.shape[1] - num_prefix_tokens
    if old_grid is None:
        g = int(round(max(n_grid, 0) ** 0.5))
        old_grid = (g, g)
    old_grid, new_grid = tuple(int(v) for v in old_grid), tuple(int(v) for v in new_grid)
    if old_grid[0] * old_grid[1] != n_grid or n_grid <= 0:
        raise ConfigError(f"pos_embed has {arr.shape[1]} rows: {num_prefix_tokens} prefix + "
                          f"{n_grid}, which is not a {old_grid[0]}x{old_grid[1]} grid")
    if min(new_grid) < 1:
        raise ConfigError(f"cannot resize pos_embed to the grid {new_grid}")
    if new_grid == old_grid:
        return pe
    prefix = arr[:, :num_prefix_tokens].astype(np.float64)
    grid = arr[0, num_prefix_tokens:].astype(np.float64).reshape(*old_grid, -1)
    if method == "bilinear":
        new = _resize_grid_bilinear(grid, new_grid)
    else:
        new = _resize_grid_bicubic(grid, new_grid)
    out = np.concatenate([prefix, new.reshape(1, -1, arr.shape[2])], axis=1)
    if is_numpy:
        return out.astype(pe.dtype)
    import paddle
    return paddle.to_tensor(out.astype(np.float32)).astype(pe.dtype)
