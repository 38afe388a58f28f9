"""Pure tensor functions: scans and chunked forms, each fast path beside its plain loop reference.

Signatures follow fla: ``op(inputs..., initial_state=None, output_final_state=False,
cu_seqlens=None) -> (out, final_state)``; ``final_state`` is ``None`` unless asked for.
"""
