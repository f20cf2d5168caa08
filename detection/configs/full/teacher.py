# COCO teacher: CenterNet-R50 trained with mmdet's CenterNet recipe (140 effective epochs).
_base_ = [
    "mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py",
    "../_base_/coco_teacher.py",
]

model = dict(_delete_=True, **_base_.teacher_model)
