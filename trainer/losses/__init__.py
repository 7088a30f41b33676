"""Self-supervised losses, one per file: InfoNCE with a queue (MoCo), MoBY's symmetric form, SwAV."""
