"""ComfyUI-CoME engine: episodes, camera paths, 3D patch memory. Pure torch + kornia; never imports ComfyUI."""
