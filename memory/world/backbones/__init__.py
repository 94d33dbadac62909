"""Denoising backbones: the embedded default (MosaicDiT) and Wan 2.1 / 2.2 through diffusers."""
