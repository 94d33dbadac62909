"""ComfyUI-CoME: memory-augmented world models as ComfyUI nodes (V3 extension entry point)."""


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the extension that lists this pack's nodes.

    The import is deferred so that tools which import this package without ComfyUI (pytest collects
    the repository root as a package) do not need ``comfy_api``.
    """
    from .nodes import CoMEExtension

    return CoMEExtension()
