"""Self-supervised training of Lookalike embedders (MoCo v2, MoBY, SwAV on timm backbones)."""
