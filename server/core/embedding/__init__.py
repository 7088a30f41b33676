"""Images to vectors: decode and preprocess (``images.py``), run the model (``model_exec.py``),
batch concurrent requests into model calls (``batcher.py``), the default model file
(``default_model.py``), the model's identity digest (``model_identity.py``) and the per-call
cancellation scope (``cancellation.py``); ``embedder.py`` puts them together.

A new embedding step (a preprocessing option, another execution mode) goes here.
May import: ``server.core.errors``, ``lookalike.modelfile``, torch, PIL. Never a backend.
"""
