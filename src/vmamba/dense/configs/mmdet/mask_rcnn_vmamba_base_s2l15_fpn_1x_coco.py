# Mask R-CNN + FPN on COCO with VMamba-B v2 [s2l15] (vmamba_base_s2l15), 1x schedule: 12 epochs, lr steps at 8 and 11.
# The authors' recipe (detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_base.py in their release): their Swin-T
# Mask R-CNN config with the VMamba backbone: AdamW lr 1e-4, betas (0.9, 0.999), weight decay
# 0.05 (none on norms), linear warm-up over 1000 iterations, batch 16 (8 GPUs x 2), drop path
# 0.6, all four stages into the FPN, backbone initialised from their ImageNet weights.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['vmamba.mmdet'], allow_failed_imports=False)

# The authors' ImageNet-1K weights (vssm_base_0229_ckpt_epoch_237.pth, top-1 83.9%): a published tag,
# downloaded once into torch hub's cache and loaded strictly (or a file: this project's or theirs).
pretrained = 'vmamba://vmamba_base_s2l15.in1k'
# The authors' trained model of this config (box_ap 49.2, mask_ap 44.1): to test or fine-tune it, set
# load_from = 'vmamba://vmamba_base_s2l15.coco_mask_rcnn_1x'  (or its URL / a downloaded file)
model = dict(
    backbone=dict(
        _delete_=True, type='vmamba_base_s2l15', out_indices=(0, 1, 2, 3), drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
