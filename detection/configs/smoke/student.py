# Smoke student trained alone (the `scratch` row): the slim CenterNet, ground-truth losses only.
_base_ = ["../_base_/synthetic_coco.py", "../_base_/smoke_models.py"]

model = _base_.student_model
