# Mask R-CNN + FPN on COCO with VMamba-T v2 [s2l5] (vmamba_tiny_s2l5), 3x schedule: 36 epochs, lr steps at 27 and 33, multi-scale 480-800 resize and crop.
# The authors' recipe (detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_tiny1.py in their release): their Swin-T
# Mask R-CNN config with the VMamba backbone: AdamW lr 1e-4, betas (0.9, 0.999), weight decay
# 0.05 (none on norms), linear warm-up over 1000 iterations, batch 16 (8 GPUs x 2), drop path
# 0.2, all four stages into the FPN, backbone initialised from their ImageNet weights.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['vmamba.mmdet'], allow_failed_imports=False)

# The authors' ImageNet-1K weights (vssm_tiny_0230_ckpt_epoch_262.pth, top-1 82.5%): a published tag,
# downloaded once into torch hub's cache and loaded strictly (or a file: this project's or theirs).
pretrained = 'vmamba://vmamba_tiny_s2l5.in1k'
# The authors' trained model of this config (box_ap 48.9, mask_ap 43.7): to test or fine-tune it, set
# load_from = 'vmamba://vmamba_tiny_s2l5.coco_mask_rcnn_3x'  (or its URL / a downloaded file)
model = dict(
    backbone=dict(
        _delete_=True, type='vmamba_tiny_s2l5', out_indices=(0, 1, 2, 3), drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
