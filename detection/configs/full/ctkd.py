# COCO ctkd: mmdet's CenterNet-R18 recipe as the student, distilled from CenterNet-R50 (the
# benchmark fills in teacher_ckpt with the cached teacher's weights).
_base_ = [
    "mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py",
    "../_base_/coco_teacher.py",
]

custom_imports = dict(imports=["kdbench.detection.ctkd"], allow_failed_imports=False)

model = dict(
    type="CenterNetKD",
    teacher=_base_.teacher_model,
    teacher_ckpt=None,
    distill=dict(
        heatmap="focal",
        retain_positives=True,
        tau0=2.0,
        soften="target",
        soften_fraction=1 / 3,
        lambda_heatmap=1.0,
        lambda_wh=0.1,
        lambda_offset=1.0,
        lambda_hint=1.0,
    ),
)
custom_hooks = [dict(type="DistillProgressHook")]
