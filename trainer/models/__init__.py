"""Backbones (timm), projection / prediction heads, SwAV prototypes, pretrained weights."""
