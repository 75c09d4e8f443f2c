"""The files between stages: one typed record and one reader/writer each (blocks, calib, manifest, weights, results)."""
