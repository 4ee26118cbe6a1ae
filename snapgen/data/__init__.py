"""Proxy data: Fashion-MNIST (embedded default), ImageNet-style image folders, latent shards."""
from snapgen.data.base import LabelledImages, to_uint8
from snapgen.data.imagefolder import ImageFolderDataset, load_imagefolder
from snapgen.data.latents import LatentSet, LatentShardWriter, load_latent_shards, write_latent_shards

__all__ = ["LabelledImages", "to_uint8", "ImageFolderDataset", "load_imagefolder", "LatentSet",
           "LatentShardWriter", "load_latent_shards", "write_latent_shards"]
