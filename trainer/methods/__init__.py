"""Self-supervised methods (MoCo v2, MoBY, SwAV) behind one interface; see ``registry.build_method``."""
