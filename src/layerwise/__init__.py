"""layerwise: control the learning rate of every layer (named parameter group) over time.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> part = layerwise.by_layer(model, sample_input=torch.zeros(1, 4))
    >>> opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
    >>> sched = layerwise.LayerwiseLR(opt, total_steps=100, policy=layerwise.OneCycle(),
    ...                               layers=layerwise.Discriminative(2.6))
"""

from . import distributed, fsdp, groups, schedules
from .autofreeze import AutoFreeze, FreezeDecision
from .freezeout import FreezeOut, FreezeOutRule, freeze_times
from .freezing import Freezer, GradualUnfreezing
from .groups import (
    Group,
    Partition,
    by_block,
    by_depth_buckets,
    by_head,
    by_kind,
    by_layer,
    by_lora,
    by_patterns,
    explicit,
)
from .hidlr import HiDLR
from .lisa import LISA
from .multirate import Multirate
from .muon import ReshapedMuon, muon_split
from .param_groups import ForeignLRWarning, partition_from_timm_groups
from .per_group import Part, PerGroupOptimizer
from .prefix_cache import FrozenPrefixCache
from .random_subsets import RandomSubsetMultirate
from .row_groups import by_rows, merge_rows
from .scheduler import LayerwiseLR
from .schedules import (
    Constant,
    Cosine,
    DepthRamp,
    Discriminative,
    GeometricRange,
    LayerSchedule,
    Linear,
    LinearInTime,
    OneCycle,
    StaggeredOneCycle,
    StepDrops,
    Triangular,
    Uniform,
    Warmup,
    depth_ramp,
)
from .secant import SecantLR
from .spectral import TempBalance
from .technique import ChangesTrainable, Technique
from .telemetry import LayerMonitor

__version__ = "0.1.0"

__all__ = [
    "LISA",
    "AutoFreeze",
    "ChangesTrainable",
    "Constant",
    "Cosine",
    "DepthRamp",
    "Discriminative",
    "ForeignLRWarning",
    "FreezeDecision",
    "FreezeOut",
    "FreezeOutRule",
    "Freezer",
    "FrozenPrefixCache",
    "GeometricRange",
    "GradualUnfreezing",
    "Group",
    "HiDLR",
    "LayerMonitor",
    "LayerSchedule",
    "LayerwiseLR",
    "Linear",
    "LinearInTime",
    "Multirate",
    "OneCycle",
    "Part",
    "Partition",
    "PerGroupOptimizer",
    "RandomSubsetMultirate",
    "ReshapedMuon",
    "SecantLR",
    "StaggeredOneCycle",
    "StepDrops",
    "Technique",
    "TempBalance",
    "Triangular",
    "Uniform",
    "Warmup",
    "by_block",
    "by_depth_buckets",
    "by_head",
    "by_kind",
    "by_layer",
    "by_lora",
    "by_patterns",
    "by_rows",
    "depth_ramp",
    "distributed",
    "explicit",
    "freeze_times",
    "fsdp",
    "groups",
    "merge_rows",
    "muon_split",
    "partition_from_timm_groups",
    "schedules",
]
