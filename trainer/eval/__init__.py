"""Evaluation of embedders: kNN accuracy, mAP and recall@k on labelled images, near-duplicate recall.

Any embedder file (``lookalike train`` export), the server's default model, or raw pixels as a
baseline, on a folder with one subfolder per class or on Fashion-MNIST.
"""
