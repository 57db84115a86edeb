"""The operations every generator shares, one home each (as NVIDIA's `torch_utils/ops`), in plain PyTorch.

- `bias_act`: bias + activation + gain + clamp (in place where allowed).
- `fc`: the equalised-learning-rate `FullyConnectedLayer` and `normalize_2nd_moment`.
- `upfirdn2d`: FIR filters (`setup_filter`), filtering with padding (`fir_filter2d`) and
  up-sampling by zero insertion + filter (`upsample2d`), following `upfirdn2d`'s conventions.
- `filtered_lrelu`: StyleGAN3's alias-free activation and its low-pass filter design.

Modulated convolutions stay in their network files.
"""
