"""The named experiment plans of ``vmamba study``: which models, which data, what budget.

A :class:`Plan` is a list of configurations (each a set of ``vmamba train`` options on top of
one shared recipe), the seeds each runs with, and the analyses run on the trained models.
Three budgets: ``micro`` (smoke tests: a minute or two), ``quick`` (runs of 20-60 s on one CPU
core: 3 minutes for the 6 runs of ``scan`` and for the 12 of ``components`` with two runs at a
time on 2 cores, measured) and ``full`` (the default: all six plans in 28 minutes with two runs
at a time on 2 cores, measured).
"""
from __future__ import annotations

from dataclasses import dataclass, field

BUDGETS = ("micro", "quick", "full")

# The small VMamba every plan starts from: the v2 block (d_state 1, ssm_ratio 1, MLP, 3x3
# depthwise conv) with the paper's z gate, at dims 24 with one block per stage except two in the
# third. The authors' v2 release drops the z gate; without it this small model stays on the
# Pathfinder plateau for most seeds at the quick budget, with it it learns the task (docs/study.md).
BASE_VMAMBA = dict(model="vmamba_tiny_s1l8", model_args=dict(dims=24, depths=[1, 1, 2, 1], z_gate=True))
V2_LABEL = "VMamba v2+z"  # the base in the peers plans
# The v0 (paper) block at about the same cost: d_state 16, ssm_ratio 2, z gate, no MLP.
BASE_VMAMBA_V0 = dict(model="vanilla_vmamba_tiny", model_args=dict(dims=24, depths=[1, 1, 2, 1], d_state=4))

# Per budget: the data, epochs x steps per epoch x batch of training per run (validation after
# each epoch), seeds per configuration, the VMamba's width, images averaged for an ERF.
SIZES = {
    "micro": dict(data="pathfinder32-mini", epochs=1, steps=8, batch_size=50, seeds=2, dims=16, erf_images=2),
    "quick": dict(data="pathfinder32", epochs=3, steps=200, batch_size=64, seeds=2, dims=16, erf_images=8),
    "full": dict(data="pathfinder32", epochs=4, steps=250, batch_size=64, seeds=3, dims=16, erf_images=16),
}

# Pixel statistics of the generated Pathfinder images (about 13% ink).
PATHFINDER_MEAN, PATHFINDER_STD = (0.133,), (0.340,)


@dataclass
class Plan:
    """One experiment: configurations x seeds, each an ordinary training run, then analyses.

    ``configs`` maps a label to ``vmamba train`` options on top of ``recipe``; the special option
    ``init_from`` names an earlier configuration whose trained model (same seed) the run starts
    from (fine-tuning). ``analyses`` run on each trained model: 'flops', 'erf' (trained ERF),
    'erf_init' (ERF at initialisation), 'resolution' (accuracy and FLOPs at 1x..4x the size).
    """

    name: str
    title: str
    question: str
    recipe: dict
    configs: dict[str, dict]
    seeds: tuple[int, ...]
    analyses: tuple[str, ...] = ("flops",)
    budget: str = "full"
    settings: dict = field(default_factory=dict)

    def runs(self) -> list[tuple[str, int]]:
        """(configuration label, seed) pairs in the order they run: configuration-major."""
        return [(label, seed) for label in self.configs for seed in self.seeds]


def recipe(budget: str, data: str | None = None, img_size: int | None = None, in_chans: int | None = None) -> dict:
    """The shared training recipe of a budget: the default preset's optimiser, on Pathfinder
    unless ``data`` names another dataset (with its ``img_size`` and ``in_chans``)."""
    size = SIZES[budget]
    r = dict(preset="default", data=data or size["data"], img_size=img_size or 32, in_chans=in_chans or 1,
             epochs=size["epochs"], max_steps_per_epoch=size["steps"], train_images=0,
             batch_size=size["batch_size"], lr=4e-3, lr_base_batch=128, warmup_epochs=0.25, drop_path=0.0,
             label_smoothing=0.0, crop_pct=1.0, interpolation="bilinear",
             scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, progress=False)
    if data is None or data.startswith("pathfinder"):
        r.update(mean=PATHFINDER_MEAN, std=PATHFINDER_STD)
    elif data.startswith("fashion-mnist"):
        r.update(img_size=img_size or 28, mean=(0.2860,), std=(0.3530,), scale=(0.85, 1.0), ratio=(0.9, 1.11))
    else:  # an ImageFolder: ImageNet statistics and the usual crops
        r.update(img_size=img_size or 224, in_chans=in_chans or 3, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), crop_pct=0.875, interpolation="bicubic", scale=(0.08, 1.0),
                 ratio=(0.75, 1.3333333333333333))
    return r


def _vmamba(budget: str, v0: bool = False, **model_args) -> dict:
    base = BASE_VMAMBA_V0 if v0 else BASE_VMAMBA
    args = dict(base["model_args"], dims=SIZES[budget]["dims"])
    args.update(model_args)
    return dict(model=base["model"], model_args=args)


def plan_scan(budget: str, **data) -> Plan:
    """Cross-scan against one-axis scans, models otherwise equal (same parameters and FLOPs).

    The paper's (v0) block, as the paper measured it."""
    configs = {mode: _vmamba(budget, v0=True, scan_mode=mode) for mode in ("cross2d", "bidi", "unidi")}
    return Plan("scan", "Scan directions: cross2d vs bidi vs unidi",
                "Does scanning along both axes in both directions (cross2d) beat scanning rows only, both ways "
                "(bidi) or one way (unidi, the single-direction baseline), and is the trained ERF cross-shaped?",
                recipe(budget, **data), configs, tuple(range(SIZES[budget]["seeds"])), ("flops", "erf"), budget)


def plan_components(budget: str, **data) -> Plan:
    """One factor at a time from the base configuration."""
    configs = {
        "base": _vmamba(budget),
        "d_state=4": _vmamba(budget, d_state=4),
        "ssm_ratio=2": _vmamba(budget, ssm_ratio=2.0),
        "no dwconv": _vmamba(budget, d_conv=0),
        "no z gate": _vmamba(budget, z_gate=False),  # the authors' v2 block
        "scan=unidi": _vmamba(budget, scan_mode="unidi"),
    }
    return Plan("components", "Components: one factor at a time",
                "What does each part of the SS2D block buy: a larger state (d_state), a wider inner "
                "dimension (ssm_ratio), the depthwise conv, the z gate, the cross-scan?",
                recipe(budget, **data), configs, tuple(range(SIZES[budget]["seeds"])), ("flops",), budget,
                settings=dict(base="v2 block with the z gate: d_state 1, ssm_ratio 1, d_conv 3, z gate, cross2d"))


def plan_peers(budget: str, **data) -> Plan:
    """Small VMamba (the base v2 block with the z gate, and the v0 block) against timm peers built
    at the base's FLOPs."""
    from .peers import PEERS, peer_config

    r = recipe(budget, **data)
    configs = {V2_LABEL: _vmamba(budget), "VMamba v0": _vmamba(budget, v0=True)}
    target = dict(configs[V2_LABEL], img_size=r["img_size"], in_chans=r["in_chans"])
    for name in PEERS:
        configs[name] = peer_config(name, target)
    return Plan("peers", "VMamba against CNN and ViT peers at equal FLOPs",
                "At the same FLOPs (within 10%), one recipe and one budget, is VMamba at least on par with "
                "ResNet, ConvNeXt, DeiT and Swin?",
                r, configs, tuple(range(SIZES[budget]["seeds"])), ("flops",), budget)


def plan_resolution(budget: str, **data) -> Plan:
    """The peers' trained models evaluated at 1x to 4x their training size."""
    p = plan_peers(budget, **data)
    p.name, p.title = "resolution", "Accuracy against input resolution (trained once, evaluated at 1x-4x)"
    p.question = ("Trained at one size and evaluated at larger ones, does VMamba keep its accuracy better than "
                  "the peers, with FLOPs growing linearly in the pixel count?")
    p.analyses = ("flops", "resolution")
    return p


def plan_erf(budget: str, **data) -> Plan:
    """ERF at initialisation and after training, VMamba and peers side by side."""
    p = plan_peers(budget, **data)
    p.name, p.title = "erf", "Effective receptive field before and after training"
    p.question = ("Is VMamba's ERF global and cross-shaped, and does that emerge with training "
                  "(it should not be there at initialisation), unlike a CNN's?")
    p.analyses = ("flops", "erf_init", "erf")
    return p


def plan_transfer(budget: str, data: str | None = None, img_size: int | None = None, in_chans: int | None = None,
                  source: str | None = None) -> Plan:
    """Fine-tuning from a model trained on ``source`` against training from scratch on the target."""
    r = recipe(budget, data, img_size, in_chans)
    src = source or ("fashion-mnist-subset" if budget != "micro" else "pathfinder32-mini")
    src_recipe = recipe(budget, src, img_size=r["img_size"], in_chans=r["in_chans"])
    src_recipe.pop("preset")
    model = _vmamba(budget)
    configs = {
        f"source: {src}": dict(model, **{k: v for k, v in src_recipe.items() if k != "progress"}),
        "scratch": dict(model),
        "fine-tuned": dict(model, init_from=f"source: {src}"),
    }
    return Plan("transfer", f"Transfer: {src} -> {r['data']}",
                f"Does a model trained on {src} fine-tune to {r['data']} better than one trained from scratch "
                f"with the same budget?",
                r, configs, tuple(range(SIZES[budget]["seeds"])), ("flops",), budget,
                settings=dict(source=src, target=r["data"]))


PLANS = {"scan": plan_scan, "peers": plan_peers, "resolution": plan_resolution, "erf": plan_erf,
         "components": plan_components, "transfer": plan_transfer}


def make_plan(name: str, budget: str = "full", seeds: int | None = None, **data) -> Plan:
    """The plan ``name`` at ``budget`` ('micro', 'quick', 'full'), optionally on other data
    (``data=``, ``img_size=``, ``in_chans=``) and with another number of seeds."""
    if name not in PLANS:
        raise ValueError(f"unknown study plan {name!r}; choose one of {', '.join(PLANS)}")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    plan = PLANS[name](budget, **{k: v for k, v in data.items() if v is not None})
    if seeds is not None:
        plan.seeds = tuple(range(seeds))
    return plan
