"""Layer-wise learning-rate decay (BEiT / timm fine-tuning): lower layers learn slower.

The model owns its layer structure: `model.num_layers()` (L, the transformer depth) and
`model.layer_id(param_name)` in 0..L+1 (embeddings 0, block i -> i+1, final norm and head L+1).
A parameter in layer i gets

    scale = layer_decay ** (L + 1 - layer_id)

times the scheduled learning rate. The scale is written to the parameter's
`optimize_attr['learning_rate']` (what `ParamAttr(learning_rate=...)` sets): Paddle's optimizers
multiply the global lr by it per parameter (`Optimizer._create_param_lr`), with any LRScheduler,
with multi_precision, and on CPU (AdamW's own `lr_ratio` is GPU-only). Because AdamW's decoupled
decay is `p -= lr * weight_decay * p` with that per-parameter lr, the decay is scaled too, as
timm's `lr_scale` does; Momentum's L2 term rides in the gradient, so it is scaled alike.
Scale 1.0 is exactly Paddle's unscaled path, so layer_decay 1.0 changes nothing.
"""
from ..errors import ConfigError


def layer_scales(model, layer_decay, names):
    """{structured name: lr scale} for `names`, from the model's own layer ids."""
    if not (hasattr(model, "layer_id") and hasattr(model, "num_layers")):
        raise ConfigError(f"Optimizer.layer_decay: the model ({type(model).__name__}) does not "
                          "say its layers (layer_id / num_layers); remove layer_decay")
    top = model.num_layers() + 1
    return {n: float(layer_decay) ** (top - model.layer_id(n)) for n in names}


def apply_layer_decay(model, named_params, layer_decay):
    """Give each (name, param) its per-layer lr scale (no-op when layer_decay is None)."""
    if layer_decay is None:
        return
    scales = layer_scales(model, layer_decay, [n for n, _ in named_params])
    for name, p in named_params:
        attr = dict(getattr(p, "optimize_attr", None) or {})
        attr["learning_rate"] = scales[name]
        p.optimize_attr = attr
