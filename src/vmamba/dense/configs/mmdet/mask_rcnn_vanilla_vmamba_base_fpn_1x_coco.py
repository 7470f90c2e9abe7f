# Mask R-CNN + FPN on COCO with VMamba-B v0 (vanilla_vmamba_base), 1x schedule: 12 epochs, lr steps at 8 and 11.
# The authors' recipe (detection/configs/vssm/mask_rcnn_vssm_fpn_coco_base.py in their release): their Swin-T
# Mask R-CNN config with the VMamba backbone: AdamW lr 1e-4, betas (0.9, 0.999), weight decay
# 0.05 (none on norms), linear warm-up over 1000 iterations, batch 16 (8 GPUs x 2), drop path
# 0.2, all four stages into the FPN, backbone initialised from their ImageNet weights.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['vmamba.mmdet'], allow_failed_imports=False)

# The authors' ImageNet-1K weights (vssmbase_dp06_ckpt_epoch_241.pth, top-1 83.7%): a published tag,
# downloaded once into torch hub's cache and loaded strictly (or a file: this project's or theirs).
pretrained = 'vmamba://vanilla_vmamba_base.in1k_ema'
# The authors' trained model of this config (box_ap 48.6, mask_ap 43.3): to test or fine-tune it, set
# load_from = 'vmamba://vanilla_vmamba_base.coco_mask_rcnn_1x'  (or its URL / a downloaded file)
model = dict(
    backbone=dict(
        _delete_=True, type='vanilla_vmamba_base', out_indices=(0, 1, 2, 3), drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
