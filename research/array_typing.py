"""Notation for the shapes in the docstrings and shape comments of `research`.

    B  batch                    T  time (sequence length)     D  d_model
    H  heads                    K  key/query head dim         V  value head dim
    M  gsa slots                N  mamba2 d_state             W  short-conv width
    F  MLP hidden width         S  decode cache length        k  gradient-accumulation steps

The vocabulary size is written out: logits are `[B, T, vocab]`. (V is the value head dim only,
and the sequence length is T everywhere, as in the ops' `[B, T, H, D]` layout.)

Runtime shape checks use `chex` (e.g. `chex.assert_shape(logits, (B, T, vocab))`) where a test
needs them; no array-type aliases are defined here.
"""
