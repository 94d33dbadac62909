"""Camera geometry: camera paths and their builders, projection, lifting, splatting and warping, metric depth."""
