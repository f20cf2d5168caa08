# COCO student trained alone (the `scratch` row): mmdet's CenterNet-R18 recipe without DCN, as
# published (25.9 AP on COCO val in mmdet's README), unchanged.
_base_ = ["mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py"]
