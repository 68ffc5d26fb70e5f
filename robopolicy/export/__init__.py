"""Export trained policies: ONNX graphs + manifest (``export_policy``), TensorRT engines (``tensorrt``).

The exported directory is run without torch by :class:`robopolicy.runtime.OnnxPolicy`.
"""

from robopolicy.export.onnx_export import GRAPH_KINDS, export_policy

__all__ = ["GRAPH_KINDS", "export_policy"]
