"""Building blocks, each selected by its YAML name through a registry."""
from snapgen.blocks import conv, norm, rope  # noqa: F401  (registers conv/norm/pos-embed names)
from snapgen.blocks.attention import Attention
from snapgen.blocks.embeddings import TimestepEmbedding
from snapgen.blocks.registry import ACTIVATION, ATTENTION, CONV, NORM, POS_EMBED, QK_NORM, Registry
from snapgen.blocks.resnet import Downsample, ResBlock, Upsample
from snapgen.blocks.transformer import FeedForward, SpatialTransformer, TransformerBlock

__all__ = ["ACTIVATION", "ATTENTION", "CONV", "NORM", "POS_EMBED", "QK_NORM", "Registry", "Attention", "TimestepEmbedding",
           "ResBlock", "Downsample", "Upsample", "FeedForward", "SpatialTransformer", "TransformerBlock"]
