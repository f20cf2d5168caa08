"""CenterNet (keypoint-based) detection KD on mmdet 3.x: the detection task and ``ctkd``.

Needs the ``detection`` extra (mmdet, pycocotools) and mmcv 2.1.0 with compiled ops
(``python -m kdbench.detection.build_mmcv ensure``). Importing this package does not import
mmdet; the modules that need it (``task``, ``models``, ``mmdet_runner``, ``ctkd``,
``losses``) do. A detection suite imports ``kdbench.detection.task``, which registers them.
"""
