"""plsc: PaddlePaddle large-scale training for Vision Transformers."""
__version__ = "0.1.0"
