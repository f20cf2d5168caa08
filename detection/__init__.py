"""CenterNet (keypoint-based) detection KD on mmdet 3.x: the ``ctkd`` method and its benchmark.

Needs the ``detection`` extra (mmdet, pycocotools) and mmcv 2.1.0 with compiled ops
(``python detection/build_mmcv.py ensure``). Importing this package does not import mmdet; the
modules that need it (``ctkd``, ``losses``, ``bench``) do.
"""
