# The COCO teacher: mmdet's CenterNet recipe with a ResNet-50 backbone (ImageNet weights from
# torchvision) and the same 64-channel stride-4 neck output as CenterNet-R18, so the hint needs
# no adapter. No DCN: its compiled op is invisible to the MAC counter, so the teacher's MACs
# (the reference of every ratio) would be undercounted.
teacher_model = dict(
    type="CenterNet",
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(type="ResNet", depth=50, norm_eval=False, norm_cfg=dict(type="BN"),
                  init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet50")),
    neck=dict(type="CTResNetNeck", in_channels=2048, num_deconv_filters=(256, 128, 64),
              num_deconv_kernels=(4, 4, 4), use_dcn=False),
    bbox_head=dict(type="CenterNetHead", num_classes=80, in_channels=64, feat_channels=64,
                   loss_center_heatmap=dict(type="GaussianFocalLoss", loss_weight=1.0),
                   loss_wh=dict(type="L1Loss", loss_weight=0.1),
                   loss_offset=dict(type="L1Loss", loss_weight=1.0)),
    train_cfg=None,
    test_cfg=dict(topk=100, local_maximum_kernel=3, max_per_img=100),
)
