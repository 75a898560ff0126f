"""Cheap-label simulators: what crowd annotators, a weak model, or a hurried tracer of a real
truth mask would have drawn.

Benchmarks of label refinement need cheap labels whose errors look like real ones, at a known
wrong-pixel rate. Salt-and-pepper noise is useless for that: it is trivially removed by any
smoothing and tells nothing about how a method copes with a mislabelled field. So, one module
each:

- :mod:`refine.cheap.crowd` (``simulate_crowd``): errors at the object level, as a person makes
  them, on trustmap's synthetic scene;
- :mod:`refine.cheap.spectral` (``simulate_model``): the errors of a weak spectral classifier;
- :mod:`refine.cheap.edits` (``simulate_edits``): a real truth mask turned into what a hurried
  crowd worker would have drawn (boundary shifts, erased small objects, swapped segments);
- :mod:`refine.cheap.common`: confusable classes (``confusability``), ``noise_rate``.

All are deterministic by seed and calibrate themselves to a target wrong-pixel rate. Ignore
pixels of the truth stay ignore in every cheap label. Smooth fields, warps and the model run in
row strips, so no float or per-class array of a whole scene is held.
"""
