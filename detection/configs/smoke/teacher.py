# Smoke teacher: the wider CenterNet on the synthetic set, trained twice as long as the students.
_base_ = ["../_base_/synthetic_coco.py", "../_base_/smoke_models.py"]

model = _base_.teacher_model

max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type="CosineAnnealingLR", by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.01),
]
