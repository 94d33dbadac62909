"""ComfyUI-CoME: memory-augmented world models as ComfyUI nodes (V3 extension entry point)."""
from .nodes import CoMEExtension


async def comfy_entrypoint() -> CoMEExtension:
    """ComfyUI's V3 entry point: the extension that lists this pack's nodes."""
    return CoMEExtension()
