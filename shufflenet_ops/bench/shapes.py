"""The 1x1 group conv shapes of ShuffleNet v1 (paper, Table 1)."""

from __future__ import annotations

from dataclasses import dataclass

from ..models import shufflenet_v1_channels

STAGE_SIZES = (28, 14, 7)  # spatial size of Stages 2-4 at 224 x 224


@dataclass(frozen=True)
class LayerShape:
    """A 1x1 group conv C_in -> C_out at size x size with ``groups`` groups and batch ``batch``."""

    batch: int
    c_in: int
    c_out: int
    size: int
    groups: int

    @property
    def name(self) -> str:
        return f"N{self.batch} {self.c_in}->{self.c_out} {self.size}x{self.size} g{self.groups}"

    @property
    def macs(self) -> int:
        return self.batch * self.size * self.size * self.c_out * self.c_in // self.groups

    def activation_elements(self) -> int:
        """Elements of x plus y: what the op must read and write at least."""
        return self.batch * self.size * self.size * (self.c_in + self.c_out)

    def weight_elements(self) -> int:
        return self.c_out * self.c_in // self.groups


def shufflenet_layer_shapes(batches=(1, 8), groups_list=(3, 8), width_mult: float = 1.0) -> list[LayerShape]:
    """Both 1x1 group convs of a stride-1 unit of every stage (bottleneck in:
    C -> C/4, and out: C/4 -> C) of ShuffleNet v1 at ``width_mult``."""
    shapes = []
    for batch in batches:
        for groups in groups_list:
            _, stages = shufflenet_v1_channels(groups, width_mult)
            for width, size in zip(stages, STAGE_SIZES):
                shapes.append(LayerShape(batch, width, width // 4, size, groups))
                shapes.append(LayerShape(batch, width // 4, width, size, groups))
    return shapes
