"""Pure tensor functions: scans and chunked forms, each fast path beside its plain loop reference.

Signatures follow fla: ``op(inputs..., initial_state=None, output_final_state=False,
cu_seqlens=None) -> (out, final_state)``; ``final_state`` is ``None`` unless asked for.
"""
from .associative import associative_scan, associative_scan_reference  # noqa: F401
from .convolution import ssm_convolution, ssm_convolution_reference  # noqa: F401
from .delta import delta_rule, delta_rule_reference  # noqa: F401
from .diagonal import linear_scan, linear_scan_reference  # noqa: F401
from .gla import gated_linear_attention, gated_linear_attention_reference  # noqa: F401
from .matrix import matrix_scan, matrix_scan_reference  # noqa: F401
from .minmax import minmax_scan, minmax_scan_reference  # noqa: F401
from .mlstm import mlstm_chunkwise, mlstm_chunkwise_reference  # noqa: F401
from .pd_scan import pd_scan, pd_scan_reference  # noqa: F401
from .selective import selective_scan, selective_scan_reference  # noqa: F401
