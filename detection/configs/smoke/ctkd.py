# Smoke ctkd: the slim student distilled from the smoke teacher (the benchmark fills in
# teacher_ckpt with the cached teacher's weights).
_base_ = ["../_base_/synthetic_coco.py", "../_base_/smoke_models.py"]

model = dict(
    _base_.student_model,
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
