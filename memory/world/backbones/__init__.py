"""Denoising backbones behind one interface: the embedded default (MosaicDiT) and, later, real video models."""
