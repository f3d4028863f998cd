"""Models over codec tokens: config and presets, blocks, Mega-AudioFormer, the flat baseline, the classifier and
checkpoints.

Nothing here knows about files of audio or token stores: a model sees (B, T, n_q) codes and a padding mask.
"""
