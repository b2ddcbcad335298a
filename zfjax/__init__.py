"""zfjax: Zeiler & Fergus (ECCV 2014) in JAX: ZFNet, the deconvnet and the paper's analyses.

The package in layers, each importing only those below it (tests/test_layers.py):
- the core, `zfjax.<module>`: architecture, models, deconv, occlusion, topk, invariance,
  correspondence, preprocess, loading, checkpoints, input_pipeline, parallel, interop,
  reference, and the configs (`zfjax.configs`);
- `zfjax.train`: training, ensembles, transfer learning;
- `zfjax.report`: the paper's figures, the gallery and the tables;
- `zfjax.cli`: the command lines (zfjax-train, zfjax-visualize, ...).
"""

__version__ = '0.2.0'
