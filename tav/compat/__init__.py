"""Reproduction of upstream's defects, kept apart from the corrected code.

The main modules (``tav.guidance``, ``tav.tia2v``) hold only the corrected computation. What upstream did
instead, and what released weights or published numbers depend on, lives here, one module per part:

- ``tav.compat.guidance``: :class:`UpstreamGuidance`, the stage-2 guidance of ``--faithful-quirks``
  (``GuidanceConfig.faithful_quirks``);
- ``tav.compat.tia2v``: the two motion-model bugs of the released TIA2V weights (the frame-collapsing dual
  temporal block and the audio row mapping), the switch values of ``compat="tia2v"`` and upstream's
  sampling settings of ``sample_motion_optim.py --faithful-quirks``.

The main classes pick their upstream variant from their own switch (``Guidance(cfg)`` with
``cfg.faithful_quirks``, ``TemporalTransformer(..., row_mapping=True)``, ``DualTemporalTransformer(...,
frame_collapse=True)``), so callers never import this package to get them. ``docs/upstream.md`` lists every
defect the project fixes and where its switch lives. Nothing is imported here, so importing one part does not
load the others.
"""
