"""What one surgery did: :class:`SurgeryReport`, whose :meth:`~SurgeryReport.lines` the CLI
prints."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SurgeryReport:
    """What one surgery did; :meth:`lines` is what the CLI prints."""

    units: int = 0  # maskrt::MultiScaleRoIAlign nodes replaced
    torchvision_units: int = 0  # torchvision multi-level patterns fused into one plugin node
    single_level: int = 0  # lone RoiAlign nodes replaced by the single-level plugin
    nodes_before: int = 0
    nodes_after: int = 0
    already_surgered: bool = False
    unrecognised: list[str] = field(default_factory=list)
    # what TensorRT would refuse or change in the result (maskrt.plugins.tensorrt_check)
    tensorrt: list[str] = field(default_factory=list)

    @property
    def replaced(self) -> int:
        return self.units + self.torchvision_units + self.single_level

    def lines(self) -> list[str]:
        if self.already_surgered:
            head = "already surgered: nothing to replace, graph unchanged"
        else:
            head = (
                f"replaced {self.replaced} RoIAlign unit(s): {self.units} maskrt "
                f"MultiScaleRoIAlign, {self.torchvision_units} torchvision multi-level, "
                f"{self.single_level} single-level"
            )
        out = [head, f"nodes: {self.nodes_before} -> {self.nodes_after}"]
        out += [f"left unrecognised: {u}" for u in self.unrecognised]
        out += [f"warning: TensorRT: {t}" for t in self.tensorrt]
        return out
